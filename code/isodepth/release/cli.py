"""Subcommands `isodepth download | export | release | convert`, registered by add_command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import paths
from .manifest import KINDS

log = logging.getLogger(__name__)

DEST_NAME = "downloads"  # default download folder, below the repository root


def add_command(sub) -> None:
    """Register download, export, release and convert on an argparse subparsers object."""
    add_download_command(sub)
    add_export_command(sub)
    add_release_command(sub)
    add_convert_command(sub)


def add_download_command(sub) -> None:
    parser = sub.add_parser(
        "download", help="fetch and verify artifacts listed in the manifest",
        description="Fetch artifacts from the manifest into DEST/<file>, verifying size and sha256 before "
                    "each file is moved into place. Files already present and verified are left alone. "
                    "Without filters every pinned (verified) artifact is fetched.")
    parser.add_argument("--kind", action="append", choices=KINDS, help="only artifacts of this kind (repeatable)")
    parser.add_argument("--run", action="append", dest="runs", metavar="RUN_ID",
                        help="only artifacts of this run id (repeatable)")
    parser.add_argument("--grid", action="append", dest="grids", help="only artifacts of this grid (repeatable)")
    parser.add_argument("--id", action="append", dest="ids", metavar="ARTIFACT_ID",
                        help="only the artifact with this id (repeatable)")
    parser.add_argument("--dest", type=Path, default=None,
                        help=f"download folder (default: {DEST_NAME}/ in the repository root)")
    parser.add_argument("--manifest", type=Path, default=None, help="manifest JSON file (default: data/manifest.json)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="also fetch entries without a pinned size and sha256, and log the measured values")
    parser.add_argument("--hf-cache", type=Path, default=None,
                        help="Hugging Face cache folder (default: HF_HUB_CACHE or ~/.cache/huggingface/hub)")
    parser.add_argument("--retries", type=int, default=5, help="retries after a dropped or truncated transfer")
    parser.add_argument("--extract", type=Path, default=None, metavar="DIR",
                        help="after downloading, verify each run-records bundle and extract it into DIR "
                             "(for example data/runs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="with --extract, replace existing files whose content differs")
    parser.add_argument("--list", action="store_true", help="list the selected artifacts and exit")
    parser.add_argument("--check", action="store_true",
                        help="verify files already in DEST without downloading; exit 1 if any is missing or bad")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_download)


def add_export_command(sub) -> None:
    parser = sub.add_parser(
        "export", help="write a checkpoint as a Hugging Face Hub model folder",
        description="Export CHECKPOINT (our folder with model.safetensors + config.json, or the authors' "
                    "model_<step>.pt + meta_<step>.json) to OUT: model.safetensors, config.json, README.md "
                    "model card and tokenizer.json, loadable with HubLoopedLM.from_pretrained(OUT).")
    parser.add_argument("checkpoint", type=Path, help="checkpoint folder, e.g. checkpoints/micro/RUN/final")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer.json to include (default: the one the checkpoint names)")
    parser.add_argument("--no-tokenizer", action="store_true", help="export without tokenizer.json")
    parser.add_argument("--record", type=Path, default=None,
                        help="run record for the model card (default: data/runs/GRID/RUN/record.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(func=_export)


def add_release_command(sub) -> None:
    parser = sub.add_parser(
        "release", help="bundle a grid's run records and update the manifest",
        description="Pack data/runs/GRID into a reproducible data/release/GRID/runs-GRID.tar.gz with a "
                    "SHA256SUMS member, write SHA256SUMS beside it, and add or update its manifest entry.")
    parser.add_argument("grids", nargs="+", help="grid names under data/runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: data/release/GRID)")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest JSON file to update (default: data/manifest.json)")
    parser.add_argument("--no-manifest", action="store_true", help="write the bundle only")
    parser.add_argument("--require-complete", action="store_true",
                        help="fail when a run planned in data/grids/GRID.yaml has no record")
    upload = parser.add_mutually_exclusive_group()
    upload.add_argument("--url", default=None,
                        help="record this https URL (the uploaded bundle, e.g. on Zenodo) as the source instead "
                             "of the committed file; with one grid only")
    upload.add_argument("--hf-repo", default=None, metavar="OWNER/NAME",
                        help="record this Hub dataset repository (file runs-GRID.tar.gz at its root) as the source")
    parser.add_argument("--hf-revision", default=None,
                        help="with --hf-repo: the commit hash of the upload (default: main, which can move)")
    parser.set_defaults(func=_release)


def add_convert_command(sub) -> None:
    parser = sub.add_parser(
        "convert", help="convert an authors' checkpoint (model_<step>.pt + meta_<step>.json) to our format",
        description="Load the authors' nanochat-style checkpoint strictly (torch.load with weights_only) "
                    "and write our checkpoint folder (model.safetensors + config.json).")
    parser.add_argument("source", type=Path, help="folder with model_<step>.pt, or the .pt file")
    parser.add_argument("out", type=Path, help="output checkpoint folder")
    parser.add_argument("--step", default=None, help="step or alias to load (default: the highest step)")
    parser.add_argument("--run-id", default=None, help="run id to record (default: the source folder name)")
    parser.set_defaults(func=_convert)


def _download(args) -> int:
    from .archive import UnsafeArchiveError
    from .bundle import BundleError, extract_bundle
    from .download import DownloadError, FetchOptions, check_artifacts, fetch_artifacts
    from .manifest import load_manifest

    manifest = load_manifest(args.manifest)
    dest = args.dest or paths.ROOT / DEST_NAME
    selected = manifest.select(kinds=args.kind, run_ids=args.runs, ids=args.ids, grids=args.grids)
    filtered = bool(args.kind or args.runs or args.ids or args.grids)
    if args.list:
        _print_listing(selected, manifest.locations)
        return 0
    if not args.allow_unverified:
        skipped = [a.id for a in selected if not a.verified]
        if skipped and filtered:
            log.error("artifacts %s have no pinned size and sha256; pass --allow-unverified to fetch them",
                      ", ".join(skipped))
            return 1
        if skipped:
            log.info("skipping %d unverified artifacts (%s); pass --allow-unverified to fetch them",
                     len(skipped), ", ".join(skipped))
        selected = [a for a in selected if a.verified]

    if not selected:
        log.warning("no artifacts selected from %s", manifest.path)
        return 0

    if args.check:
        report = check_artifacts(selected, dest)
        for artifact_id, status in report.items():
            print(f"{artifact_id}\t{status}")
        return 0 if all(status in ("ok", "unpinned") for status in report.values()) else 1

    options = FetchOptions(allow_unverified=args.allow_unverified, hf_cache_dir=args.hf_cache,
                           retries=args.retries, progress=not args.no_progress)
    try:
        results = fetch_artifacts(selected, dest, options)
    except DownloadError as error:
        log.error("%s", error)
        return 1
    for result in results:
        print(f"{result.artifact.id}\t{result.action}\t{result.path}")
        if args.extract and result.artifact.kind == "run-records":
            try:
                extract_bundle(result.path, args.extract, overwrite=args.overwrite)
            except (BundleError, UnsafeArchiveError, FileExistsError) as error:
                log.error("artifact %s: extraction into %s failed: %s", result.artifact.id, args.extract, error)
                return 1
    return 0


def _print_listing(artifacts, locations) -> None:
    """Print one tab-separated line per artifact (id, kind, run id, bytes, state, source), then the locations."""
    for artifact in artifacts:
        size = "?" if artifact.size is None else str(artifact.size)
        state = "verified" if artifact.verified else "unverified"
        print(f"{artifact.id}\t{artifact.kind}\t{artifact.run_id or '-'}\t{size}\t{state}\t"
              f"{artifact.source.describe()}")
    for location in locations:
        print(f"# {location.name}: {location.url}")


def _export(args) -> int:
    from .export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out, tokenizer=args.tokenizer,
                            include_tokenizer=not args.no_tokenizer, overwrite=args.overwrite, record=args.record)
    print(out)
    return 0


def _release(args) -> int:
    from .bundle import BundleError, build_run_bundle, bundle_name
    from .manifest import ManifestError, Source, check_url, load_manifest, save_manifest

    if args.url and len(args.grids) > 1:
        log.error("--url names one file; release one grid at a time with it")
        return 1
    if args.url:
        try:
            check_url(args.url, "--url")
        except ManifestError as error:
            log.error("%s", error)
            return 1
    entries = []
    for grid in args.grids:
        source = None
        if args.url:
            source = Source(type="url", url=args.url)
        elif args.hf_repo:
            source = Source(type="hf", repo_id=args.hf_repo, repo_type="dataset",
                            revision=args.hf_revision or "main", path=bundle_name(grid))
        try:
            bundle = build_run_bundle(grid, out_dir=args.out, expected_run_ids=_planned_run_ids(grid),
                                      require_complete=args.require_complete)
            if not args.no_manifest:
                entries.append(bundle.manifest_entry(source))
        except (BundleError, ManifestError) as error:
            log.error("%s", error)
            return 1
        print(json.dumps({"grid": grid, "bundle": str(bundle.path), "runs": len(bundle.run_ids),
                          "size": bundle.size, "sha256": bundle.sha256}))
    if not args.no_manifest:
        manifest = load_manifest(args.manifest)
        try:
            manifest.upsert(entries)
            save_manifest(manifest)
        except ManifestError as error:
            log.error("%s", error)
            return 1
        log.info("updated %s with %s", manifest.path, ", ".join(entry.id for entry in entries))
    return 0


def _convert(args) -> int:
    from .authors import convert_authors_checkpoint

    print(convert_authors_checkpoint(args.source, args.out, step=args.step, run_id=args.run_id))
    return 0


def _planned_run_ids(grid: str) -> list[str] | None:
    """Return the run ids planned for a grid with a spec under data/grids, or None for ad-hoc folders."""
    from ..grids import load_grid

    if not (paths.GRIDS / f"{grid}.yaml").exists():
        return None
    return [run.run_id for run in load_grid(grid).runs()]


def main(argv=None) -> int:
    """Run these subcommands alone, before they are wired into `isodepth`."""
    parser = argparse.ArgumentParser(prog="isodepth-release")
    add_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
