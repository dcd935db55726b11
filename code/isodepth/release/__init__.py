"""Release and download layer: manifest, verifying downloader, run-record bundles, Hub export and
the reader for the study authors' checkpoint format.

Modules: manifest (schema), download (fetch + verify), verify (sha256, quarantine), archive
(safe tar extraction), bundle (run-record tarballs), export (Hub folders), authors (their
checkpoints), cli (the download, export, release and convert subcommands).
"""
