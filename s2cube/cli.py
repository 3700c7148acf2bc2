"""``s2cube`` command line: synth, convert, info, validate.

The converter's stack (rasterio, s2cloudless) is imported inside the commands that need
it, so ``s2cube info`` works where only the reader is installed. Progress bars live
here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any

import click

from s2cube.errors import S2CubeError


def _options(pairs: tuple[str, ...]) -> dict | None:
    """``--storage-option key=value`` pairs to a dict (values parsed as JSON when they can be)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not key=value", param_hint="--storage-option")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out or None


def _storage_failure(exc: OSError, urls: tuple[str, ...], options: dict | None,
                     action: str | None = None) -> Exception:
    """An object-store failure as a :class:`StorageError` naming what to fix, if it is one."""
    from s2cube.io.storage import parse_location, storage_error

    for url in urls:
        loc = parse_location(url, options)
        if not loc.is_local:
            err = storage_error(exc, loc,
                                action=action or ("write" if url == urls[-1] else "read"))
            if err is not None:
                return err
    return exc


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR):
    """Hold back a library logger's notices a command reports in its own words."""
    log = logging.getLogger(name)
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)


def _writer(loc) -> str:
    """What to do about an unfinished cube: whether a conversion is writing it now."""
    again = "run the same `s2cube convert` command again to finish it (it resumes)"
    try:
        from s2cube_conversion.lock import describe_lock

        holder = describe_lock(loc)
    except Exception:  # only a hint: the converter may not be installed
        holder = None
    if holder is None:
        return f"if no conversion is running, {again}"
    if holder.startswith("a conversion is writing"):
        return f"{holder}; wait for it to finish"
    return f"{holder}; {again}"


def _fail(exc: Exception, options: dict | None = None, code: int = 2) -> None:
    from s2cube.io.storage import redact

    click.echo(f"error: {redact(str(exc), options)}", err=True)
    sys.exit(code)


class _Bar:
    """A progress bar that appears at the first finished patch and prints its last state once.

    Nothing is printed before there is progress to show (a command that fails early shows
    only its error), the final state is printed by :meth:`close` alone, and a failed
    command's bar is cleared before its error.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None  # a tqdm bar, made at the first progress

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            # shown by refresh() below while patches go on, and once at the end by close()
            self.bar = tqdm(total=total, unit="patch", dynamic_ncols=True, delay=1e9)
        self.bar.total, self.bar.n = total, done
        if done < total:
            self.bar.refresh()

    def close(self, ok: bool = True) -> None:
        """Print the final state (``ok``), or clear the bar before an error."""
        if self.bar is not None:
            self.bar.delay = 0
            self.bar.leave = ok
            self.bar.close()
            self.bar = None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="s2cube")
def main(verbose: int) -> None:
    """s2cube: SEN12MS-CR-TS as one cloud-native Zarr v3 cube."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # dask's own INFO chatter only with -vv (read by dask when it is first imported)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose >= 2 else "warning")


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--roi", "rois", multiple=True, help="ROI to generate (repeatable), e.g. ROIs1868_73.")
@click.option("--grid", default="3x3", show_default=True, help="Patch grid per ROI, ROWSxCOLS.")
@click.option("--patch-size", default=256, show_default=True, type=int)
@click.option("--slots", default=30, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-s1", is_flag=True, help="Write no Sentinel-1 files.")
@click.option("--missing", default=0.0, type=float, show_default=True,
              help="Files to leave out: a count, or a fraction below 1.")
@click.option("--corrupt", default=0.0, type=float, show_default=True,
              help="Files to damage: a count, or a fraction below 1.")
@click.option("--holes", default=0, type=int, show_default=True,
              help="Grid positions per ROI without any file (an irregular footprint).")
@click.option("--junk", is_flag=True, help="Add .DS_Store, notes and checksum files.")
@click.option("--spectra", default="real", show_default=True, type=click.Choice(["real", "synthetic"]),
              help="Build S2 from the real L1C pixels, or from a documented stand-in.")
@click.option("--real-pixels", type=click.Path(dir_okay=False),
              help="Path of a real pixels file (default: $S2CUBE_REAL_PIXELS, else the packaged copy).")
@click.option("--layout", default="sen12ms-cr-ts", show_default=True,
              type=click.Choice(["sen12ms-cr-ts", "sen12ms-cr"]),
              help="sen12ms-cr: the mono-temporal SEN12MS-CR layout (one S1, one cloud-free and one "
                   "cloudy S2 per patch; overlapping patches; --roi names scenes such as "
                   "ROIs1868_summer_73, or the SEN12MS-CR-TS ROI of the same ground).")
@click.option("--gaps", default=1, show_default=True, type=int,
              help="sen12ms-cr: patches per scene left out (gaps in the patch numbers).")
@click.option("--unpaired", default=1, show_default=True, type=int,
              help="sen12ms-cr: patches without their cloudy file.")
@click.option("--full-archive", is_flag=True,
              help="The whole archive's cardinality: all 53 ROIs (or --roi), real-like grids "
                   "(16,009 patch locations), resumable; --grid, --missing, --corrupt, --holes "
                   "and --junk do not apply. --patch-size defaults to 8 here.")
@click.option("--workers", type=int, help="With --full-archive: processes (default: the cores).")
def synth(directory, rois, grid, patch_size, slots, seed, no_s1, missing, corrupt, holes, junk,
          spectra, real_pixels, layout, gaps, unpaired, full_archive, workers) -> None:
    """Write a synthetic archive that looks like SEN12MS-CR-TS (or SEN12MS-CR) into DIRECTORY."""
    from s2cube_conversion.synth import synthesize_archive

    if full_archive and layout != "sen12ms-cr-ts":
        raise click.BadParameter("--full-archive writes the SEN12MS-CR-TS layout; leave out "
                                 "--layout sen12ms-cr", param_hint="--full-archive")
    if full_archive:  # tiny patches unless asked for: 960,000 files of 256 px are 1.3 TB
        given = click.get_current_context().get_parameter_source("patch_size")
        size = patch_size if given is not click.core.ParameterSource.DEFAULT else 8
        _synth_full(directory, rois, size, slots, seed, no_s1, spectra, real_pixels,
                    workers, missing or corrupt or holes or junk)
        return

    try:
        rows, cols = (int(v) for v in grid.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{grid!r} is not ROWSxCOLS, e.g. 3x3", param_hint="--grid") from None
    if layout == "sen12ms-cr":
        _synth_cr(directory, rois, (rows, cols), patch_size, seed, not no_s1, spectra, real_pixels,
                  gaps, unpaired, {"--slots": slots != 30, "--missing": missing, "--corrupt": corrupt,
                                   "--holes": holes, "--junk": junk})
        return
    kwargs = {"grid": (rows, cols), "patch_size": patch_size, "n_slots": slots, "seed": seed,
              "s1": not no_s1, "missing": missing, "corrupt": corrupt, "holes": holes, "junk": junk,
              "spectra": spectra, "real_pixels": real_pixels}
    if rois:
        kwargs["rois"] = tuple(rois)
    try:
        manifest = synthesize_archive(directory, **kwargs)
    except (S2CubeError, ValueError, FileNotFoundError, FileExistsError) as exc:
        _fail(exc)
    click.echo(f"wrote {len(manifest.files)} files ({manifest.bytes_written / 1e6:.1f} MB) for "
               f"{len(manifest.rois)} ROIs into {directory}")


def _synth_cr(directory, rois, grid, patch_size, seed, s1, spectra, real_pixels, gaps, unpaired,
              ts_only) -> None:
    """``s2cube synth --layout sen12ms-cr``."""
    from s2cube_conversion.cr_synth import synthesize_cr_archive

    given = [k for k, v in ts_only.items() if v]
    if given:
        raise click.BadParameter(f"{', '.join(given)}: options of the time-series layout",
                                 param_hint="--layout")
    kwargs = {"grid": grid, "patch_size": patch_size, "seed": seed, "s1": s1, "gaps": gaps,
              "unpaired": unpaired, "spectra": spectra, "real_pixels": real_pixels}
    if rois:
        kwargs["scenes"] = tuple(rois)
    try:
        m = synthesize_cr_archive(directory, **kwargs)
    except (S2CubeError, ValueError, FileNotFoundError, FileExistsError) as exc:
        _fail(exc)
    click.echo(f"wrote {len(m.files)} files ({m.bytes_written / 1e6:.1f} MB) for {len(m.scenes)} "
               f"SEN12MS-CR scenes into {directory}")


def _synth_full(directory, rois, patch_size, slots, seed, no_s1, spectra, real_pixels, workers,
                damage) -> None:
    """``s2cube synth --full-archive``: see :mod:`s2cube_conversion.synth_full`."""
    from tqdm import tqdm

    from s2cube_conversion.synth_full import synthesize_full_archive

    if damage:
        raise click.BadParameter("--missing, --corrupt, --holes and --junk do not apply to the "
                                 "full archive; leave them out", param_hint="--full-archive")
    bar = tqdm(total=0, unit="ROI", dynamic_ncols=True)

    def tick(done: int, total: int) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        out = synthesize_full_archive(directory, rois=tuple(rois) or None, patch_size=patch_size,
                                      n_slots=slots, seed=seed, s1=not no_s1, workers=workers,
                                      spectra=spectra, real_pixels=real_pixels, progress=tick)
    except (S2CubeError, ValueError, FileNotFoundError, FileExistsError) as exc:
        bar.close()
        _fail(exc)
    bar.close()
    click.echo(f"{out.files} files ({out.written} written, {out.kept} already there) for "
               f"{len(out.rois)} ROIs, {out.patches} patch locations, into {directory} "
               f"in {out.seconds:.0f} s")


@main.command()
@click.argument("source")
@click.argument("cube")
@click.option("--split", type=click.Choice(["all", "train", "val", "test"]), help="Only this split.")
@click.option("--region", type=click.Choice(["all", "africa", "america", "asiaEast", "asiaWest",
                                             "europa"]), help="Only this region.")
@click.option("--roi", "rois", multiple=True, help="Only this ROI (repeatable), e.g. ROIs1868_73.")
@click.option("--no-s1", is_flag=True, help="Convert Sentinel-2 only.")
@click.option("--scheduler", help="Address of an existing dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Local workers (default: one per core).")
@click.option("--threads-per-worker", default=1, show_default=True, type=int)
@click.option("--cloud-method", default="fast", show_default=True,
              type=click.Choice(["fast", "reference"]), help="Cloud detector implementation.")
@click.option("--s1-dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "float64"]),
              help="S1 storage dtype; auto keeps float32 only when it is exact.")
@click.option("--storage-option", "storage", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option for both URLs (repeatable); AWS_* env vars work too.")
@click.option("--stac", "with_stac", is_flag=True,
              help="Also write the cube's STAC catalog beside it (see `s2cube stac`).")
@click.option("--verify", "verify_existing", is_flag=True,
              help="Check the chunks of patch locations already in the cube and convert again "
                   "those with bad ones.")
@click.option("--break-lock", is_flag=True,
              help="Take over the cube's lock even if the conversion holding it may still run "
                   "(one whose process is gone is taken over without this).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def convert(source, cube, split, region, rois, no_s1, scheduler, workers, threads_per_worker,
            cloud_method, s1_dtype, storage, with_stac, verify_existing, break_lock,
            progress) -> None:
    """Convert the GeoTIFF archive at SOURCE into the cube at CUBE (resumable, incremental).

    Exit codes: 0 done, 1 done with problems recorded as gaps, 2 error, 3 another
    conversion is writing CUBE (nothing was written; run again when it has finished).
    """
    from s2cube_conversion import Selection
    from s2cube_conversion import convert as run
    from s2cube_conversion.lock import CubeLockedError

    options = _options(storage)
    bar = _Bar(progress)
    try:
        report = run(source, cube, selection=Selection(split, region, tuple(rois)), s1=not no_s1,
                     cloud_method=cloud_method, s1_dtype=s1_dtype, scheduler=scheduler, n_workers=workers,
                     threads_per_worker=threads_per_worker, storage_options=options, progress=bar,
                     verify=verify_existing, break_lock=break_lock)
    except CubeLockedError as exc:
        bar.close(ok=False)
        _fail(exc, options, code=3)
    except S2CubeError as exc:
        bar.close(ok=False)
        _fail(exc, options)
    except OSError as exc:
        bar.close(ok=False)
        err = _storage_failure(exc, (source, cube), options)
        if err is exc:
            raise
        _fail(err, options)
    bar.close()
    for path in report.skipped_files:
        click.echo(f"notice: skipped {path} (not a .tif)", err=True)
    click.echo(f"{report.cube}: {report.patches} patch locations, {report.converted} converted, "
               f"{report.resumed} already there, {report.seconds:.1f} s")
    if with_stac:
        from s2cube import stac as catalog

        try:
            click.echo(f"wrote {catalog.write_catalog(report.cube, None, options)}")
        except S2CubeError as exc:
            _fail(exc, options)
    if report.problems:
        click.echo(f"{len(report.problems)} problem(s), recorded as gaps in the cube:", err=True)
        for path, message in report.problems.items():
            click.echo(f"  - {path}: {message}", err=True)
        sys.exit(1)


@main.command()
@click.argument("cube")
@click.option("--storage-option", "storage", multiple=True, metavar="KEY=VALUE")
def info(cube, storage) -> None:
    """What CUBE holds, per split and region, with sizes and cloudiness."""
    from s2cube import schema, sen12mscr
    from s2cube.analysis import crsummary
    from s2cube.analysis.summary import summarize
    from s2cube.io.open import open_cube
    from s2cube.io.storage import filesystem, parse_location

    options = _options(storage)
    loc = parse_location(cube, options)
    try:
        with _quiet_logger("s2cube.io.open"):  # info reports the state itself
            ds = open_cube(cube, storage_options=options, allow_incomplete=True)
        stored = int(filesystem(loc).du(loc.path))
    except S2CubeError as exc:
        _fail(exc, options)
    except OSError as exc:
        err = _storage_failure(exc, (cube,), options, action="read")
        if err is exc:
            err = S2CubeError(f"{cube} cannot be opened as a cube ({exc}); check the path")
        _fail(err, options)
    except (ValueError, KeyError) as exc:
        _fail(S2CubeError(f"{cube} cannot be opened as a cube ({exc}); check the path"), options)
    state = ds.attrs.get(schema.ATTR_STATE)
    if "coverage" not in ds:
        _fail(S2CubeError(f"{loc.url}: its conversion has not finished (s2cube_state "
                          f"{state!r}, no coverage yet); {_writer(loc)}"), options)
    try:
        s = (crsummary.summarize(ds, stored_bytes=stored) if sen12mscr.is_cr(ds)
             else summarize(ds, stored_bytes=stored))
    except S2CubeError as exc:
        _fail(exc, options)
    click.echo(f"{loc.url}  state={s.state}  patch={s.patch_size}px  {crsummary.extent(ds)}  "
               f"stored={stored / 1e6:.1f} MB")
    click.echo(s.table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if s.problems:
        click.echo(f"{len(s.problems)} problem(s) recorded at conversion:")
        for p in s.problems:
            click.echo(f"  - {p['path']}: {p['message']}")


@main.command()
@click.argument("source")
@click.argument("cube")
@click.option("--roi", "rois", multiple=True, help="Only this ROI (repeatable).")
@click.option("--scheduler", help="Address of an existing dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Local workers (default: one per core).")
@click.option("--storage-option", "storage", multiple=True, metavar="KEY=VALUE")
def validate(source, cube, rois, scheduler, workers, storage) -> None:
    """Compare every file of SOURCE with CUBE; exit 1 and list what differs, 2 on errors."""
    from s2cube.io.backend import open_source
    from s2cube_conversion.run import dask_client
    from s2cube_conversion.validate import validate as run

    options = _options(storage)
    bar = _Bar()
    try:
        open_source(cube, options)  # a finished cube, or say why not before starting workers
        with dask_client(None, scheduler, workers, 1) as client:
            report = run(source, cube, rois=list(rois) or None, storage_options=options,
                         progress=bar, client=client)
    except S2CubeError as exc:
        bar.close(ok=False)
        _fail(exc, options)
    except OSError as exc:
        bar.close(ok=False)
        err = _storage_failure(exc, (source, cube), options, action="read")
        if err is exc:
            raise
        _fail(err, options)
    bar.close()
    click.echo(f"{report.files} files checked, {len(report.differences)} difference(s)")
    for d in report.differences:
        click.echo(f"  - {d}")
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("cube")
@click.option("--decode", is_flag=True, help="Also decompress every chunk (slower; the "
              "checksums already catch any changed byte).")
@click.option("--scheduler", help="Address of an existing dask scheduler (default: a local cluster).")
@click.option("--workers", type=int, help="Local workers (default: one per core).")
@click.option("--storage-option", "storage", multiple=True, metavar="KEY=VALUE")
@click.option("--progress/--no-progress", default=True, show_default=True)
def verify(cube, decode, scheduler, workers, storage, progress) -> None:
    """Check every chunk of CUBE against its checksums; exit 1 and list the bad ones.

    No source archive is needed. `s2cube convert ARCHIVE CUBE --verify` rewrites the patch
    locations that hold bad chunks.
    """
    from s2cube.io.verify import verify_cube

    options = _options(storage)
    bar = _Bar(progress)
    try:
        if scheduler or workers:
            from s2cube_conversion.run import dask_client

            with dask_client(None, scheduler, workers, 1) as client:
                report = verify_cube(cube, options, client=client, decode=decode, progress=bar)
        else:
            report = verify_cube(cube, options, decode=decode, progress=bar)
    except S2CubeError as exc:
        bar.close(ok=False)
        _fail(exc, options)
    bar.close()
    click.echo(f"{report.url}: {report.chunks} chunks of {report.shards} patch locations "
               f"checked, {len(report.bad)} bad")
    for b in report.bad:
        click.echo(f"  - {b}")
    if report.bad:
        click.echo("convert the archive again with --verify to rewrite the patch locations "
                   "that hold them: s2cube convert ARCHIVE CUBE --verify", err=True)
    sys.exit(0 if report.ok else 1)


@main.command()
@click.argument("cube")
@click.option("--out", type=str, default=None,
              help="Catalog folder or S3 prefix (default: CUBE's sibling <name>.stac).")
@click.option("--inline", is_flag=True, help="Print the Collection JSON; write nothing.")
@click.option("--no-thumbnails", is_flag=True, help="Write no PNG quicklooks.")
@click.option("--storage-option", "storage", multiple=True, metavar="KEY=VALUE",
              help="fsspec storage option for the cube and the catalog (repeatable).")
def stac(cube, out, inline, no_thumbnails, storage) -> None:
    """Write the STAC catalog of CUBE: a Collection and one Item per ROI."""
    from s2cube import stac as catalog

    options = _options(storage)
    if inline and out:
        raise click.BadParameter("--inline writes nothing; leave out --out", param_hint="--inline")
    try:
        if inline:
            click.echo(json.dumps(catalog.catalog_json(cube, storage_options=options), indent=2))
            return
        url = catalog.write_catalog(cube, out, options, thumbnails=not no_thumbnails)
    except ImportError as exc:
        _fail(S2CubeError(f"{exc.name or exc} is missing: pip install 's2cube[stac]'"), options)
    except S2CubeError as exc:
        _fail(exc, options)
    except OSError as exc:
        err = _storage_failure(exc, (cube, out or cube), options)
        if err is exc:
            raise
        _fail(err, options)
    click.echo(f"wrote {url}")


if __name__ == "__main__":  # pragma: no cover
    main()
