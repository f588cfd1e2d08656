"""The shared base of studies: an experiment of the papers as one class, run by the CLI and the Studies page.

A study is one module in ``uap_core/studies/`` holding

- a ``Settings`` dataclass: every knob with its default (the papers' where they give one), declared with
  :func:`uap_core.params.param` so the CLI builds its options and the page its form from it (lists, e.g.
  ``list[int]``, are given comma-separated; each element is checked against the range/choices);
- a :class:`Study` subclass whose :meth:`Study.run` yields :class:`StudyProgress` as results arrive (rows of
  its table so far) and ends with :attr:`Study.result`, a :class:`StudyResult` of plain data;
- a ``figure(result)`` staticmethod that builds the Plotly figure from that plain data alone (the CLI writes it
  to HTML/PNG, the page draws it as the rows arrive).

    study = get_study("images_needed")(settings={"seeds": [0, 1]})
    for progress in study.run():          # StudyProgress(fraction, message, tables so far)
        print(progress.fraction, progress.message)
    write_outputs(study.result, study.figure(study.result), "studies/")  # images_needed.csv / .json / .html (/ .png)

Nothing here imports Streamlit; the figure helpers import Plotly lazily.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator

from ..datasets import CIFAR10_TEST
from ..errors import ParameterError
from ..jsonable import jsonable
from ..params import parse_params

if TYPE_CHECKING:  # for the type hints only: the study modules import torch and the models lazily
    import torch

    from ..images import ImageSet
    from ..models import Classifier

PROGRESS_SECONDS = 0.5  # at most this long between progress reports while a study fits a UAP


@dataclass
class StudyProgress:
    """fraction: 0..1 of the work done; message: one line for a progress bar; tables: the result tables so far
    (name → rows), for a figure that fills in as results arrive."""

    fraction: float
    message: str
    tables: dict[str, list[dict[str, Any]]]


@dataclass
class StudyResult:
    """A finished (or stopped) study as plain data.

    tables: name → rows (list of flat dicts); the first table is the main one (written as ``<study>.csv``),
    others as ``<study>_<table>.csv``. summary: the headline numbers the study's claim is about. settings: every
    setting as used. environment: library versions, device, seconds. stopped: True when the user stopped it.
    """

    study: str
    title: str
    settings: dict[str, Any]
    tables: dict[str, list[dict[str, Any]]]
    summary: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"study": self.study, "title": self.title, "settings": self.settings, "summary": self.summary,
                "environment": self.environment, "stopped": self.stopped, "tables": self.tables}


class Study:
    """Base of a study. Subclasses set the ClassVars, a ``Settings`` dataclass and implement :meth:`_run`
    (a generator yielding ``(fraction, message)`` while appending rows to ``self.tables``) and
    :meth:`figure`."""

    name: ClassVar[str]
    title: ClassVar[str]
    summary: ClassVar[str]  # one line: what the study shows
    paper: ClassVar[str]  # which paper's experiment, and which figure/table
    Settings: ClassVar[type]
    table_names: ClassVar[tuple[str, ...]] = ("results",)

    def __init__(self, settings: Any = None, device: str = "auto") -> None:
        if settings is None or isinstance(settings, dict):
            settings = parse_params(self.Settings, settings, noun="setting")
        if not isinstance(settings, self.Settings):
            raise ParameterError(f"{self.name} takes {self.Settings.__name__}, got {type(settings).__name__}")
        self.settings = settings
        self.device = device
        self.tables: dict[str, list[dict[str, Any]]] = {name: [] for name in self.table_names}
        self.summary_values: dict[str, Any] = {}
        self.result: StudyResult | None = None
        self._stop = False

    def stop(self) -> None:
        """End the study after the current unit of work (from any thread); the result keeps what is done.
        A :class:`~uap_core.run.Run` driven through :meth:`drive` is asked to stop after its current step."""
        self._stop = True
        run = getattr(self, "_active_run", None)
        if run is not None:
            run.stop()

    def drive(self, run: Any) -> Iterator[Any]:
        """Iterate ``run.events()`` (a :class:`uap_core.run.Run`) so that :meth:`stop` also ends that run after its
        current step. Yields the RunEvents; ``run.result`` is set at the end (also when stopped)."""
        self._active_run = run
        try:
            if self._stop:
                run.stop()
            yield from run.events()
        finally:
            self._active_run = None

    def fit(self, run: Any, start: float, end: float, label: str,
            on_event: Callable[[Any], None] | None = None) -> Iterator[tuple[float, str]]:
        """Fit a UAP through ``run`` (a :class:`uap_core.run.Run`, driven by :meth:`drive`, so Stop ends it after
        its current step), calling ``on_event`` with every RunEvent (start/step/eval/…) and yielding
        ``(fraction, message)`` from ``start`` to ``end`` (fractions of the whole study), at most once every
        :data:`PROGRESS_SECONDS` (a page that redraws per step would spend the run's time drawing). ``run.result``
        is set at the end (also when stopped)."""
        planned, last_report = 1, 0.0
        for event in self.drive(run):
            if on_event is not None:
                on_event(event)
            if event.kind == "start":
                planned = max(1, int(event.data["total_steps"]))
            elif event.kind == "step":
                now = time.perf_counter()
                if now - last_report >= PROGRESS_SECONDS:
                    last_report = now
                    # capped: start + (end - start) may exceed end by a float ulp, and progress never goes back
                    fraction = min(end, start + (end - start) * min(1.0, event.step / planned))
                    yield fraction, f"{label}: step {event.step}/{planned}"

    @property
    def stopping(self) -> bool:
        return self._stop

    def run(self, should_stop: Callable[[], bool] | None = None) -> Iterator[StudyProgress]:
        """Run the study, yielding progress; ``self.result`` is set at the end (also when stopped)."""
        started = time.perf_counter()
        work = self._run()
        try:
            for fraction, message in work:
                yield StudyProgress(min(max(float(fraction), 0.0), 1.0), message,
                                    {k: list(v) for k, v in self.tables.items()})
                if self._stop or (should_stop is not None and should_stop()):
                    self.stop()
                    break
        finally:
            work.close()  # a stopped study's work (and the run it drives, with its tensors) ends now, not at GC
        self.finalise(time.perf_counter() - started)
        yield StudyProgress(1.0, "stopped" if self._stop else "done", self.result.tables)

    def finalise(self, seconds: float = 0.0) -> StudyResult:
        """Compute the summary (:meth:`finish`) and set :attr:`result` from the tables so far. :meth:`run` calls it
        at the end; call it yourself after an interrupted iteration (e.g. Ctrl-C) to keep what is done."""
        self.finish()
        self.result = StudyResult(
            study=self.name, title=self.title, settings=jsonable(dataclasses.asdict(self.settings)),
            tables={k: list(v) for k, v in self.tables.items()}, summary=jsonable(self.summary_values),
            environment=environment(self.device, seconds), stopped=self._stop)
        return self.result

    def run_all(self) -> StudyResult:
        """Run to the end and return the result."""
        for _ in self.run():
            pass
        assert self.result is not None
        return self.result

    def _run(self) -> Iterator[tuple[float, str]]:
        raise NotImplementedError

    def run_device(self) -> "torch.device":
        """The device the study runs on: the ``device`` setting when the study was made with "auto" (the GPU when
        there is one), else the device it was made with; kept in ``self.device`` for the result's environment."""
        from ..models import resolve_device

        setting = getattr(self.settings, "device", "auto")
        device = resolve_device(setting if self.device in (None, "auto") else self.device)
        self.device = str(device)
        return device

    def load_model_and_images(self, model_name: str, prepare: bool = False) -> tuple["Classifier", "ImageSet"]:
        """(the model on :meth:`run_device`, the settings' ``images`` decoded at its input size and resize policy:
        pixels (N, 3, H, W) in [0, 1]); ``prepare``: the model channels_last on the device
        (:func:`uap_core.run_setup.prepare_model`), for a study that computes with it itself rather than through a
        :class:`~uap_core.run.Run` (which prepares its own)."""
        from ..models import load_model
        from ..run_setup import prepare_model
        from ..transfer import images_for

        device = self.run_device()
        model = load_model(model_name, device)
        if prepare:
            model = prepare_model(model, device)
        return model, images_for(model, self.settings.images)

    def check_split(self, images: "ImageSet", **parts: int) -> None:
        """ParameterError, naming the parts (setting name → images it takes), when the image source holds fewer
        images than they add up to."""
        needed = sum(parts.values())
        if needed > len(images):
            names = [name.replace("_", " ") for name in parts]
            lower = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise ParameterError(f"{self.name} needs {' + '.join(names)} = {' + '.join(map(str, parts.values()))} = "
                                 f"{needed} images; {images.source} has {len(images)}: lower {lower}")

    def images_required(self) -> int:
        """How many images the image source must hold for these settings (the parts the study splits it into):
        ``fit + holdout`` unless a study says otherwise. What :mod:`uap_core.studies.needs` reports before a run."""
        s = self.settings
        return int(getattr(s, "fit", 0)) + int(getattr(s, "holdout", 0))

    def models_used(self) -> list[str]:
        """The registry names of the single models these settings load (ensemble members listed one by one)."""
        return [self.settings.model]

    def finish(self) -> None:
        """Compute ``self.summary_values`` from the tables (called also when stopped)."""

    @staticmethod
    def figure(result: StudyResult):  # -> plotly.graph_objects.Figure
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------- shared data helpers
SHARED_DIR = Path(os.environ.get("UAP_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared")
# The default image source of the studies that need hundreds of fit images plus a held-out set (the papers'
# ImageNet sets are not at hand): the 10,000 CIFAR-10 test images, the symbolic source "cifar10-test" — a .npz in
# $UAP_DATA_DIR or the cache, else downloaded once (170 MB, see uap_core.datasets). Name any folder / .npz instead
# (the tests and the README's figures name ../shared/data/cifar10-test-2000.npz).
CIFAR_TEST_IMAGES = CIFAR10_TEST


def fixed_split(fit_set: Any, holdout_set: Any) -> Any:
    """One :class:`~uap_core.images.ImageSet` holding ``fit_set`` then ``holdout_set`` whose ``split()`` returns
    exactly those two parts, whatever the seed: hand it to a :class:`~uap_core.run.Run` with ``fit=len(fit_set)``
    and ``holdout=len(holdout_set)`` when a study must keep the held-out images fixed across runs (a Run's own
    split is a seeded permutation)."""
    import torch

    from ..images import ImageSet

    class _FixedSplit(ImageSet):
        def split(self, fit: int, holdout: int, seed: int):  # noqa: ARG002 - the seed chose nothing here
            if (fit, holdout) != (len(fit_set), len(holdout_set)):
                raise ParameterError(f"this image set splits into {len(fit_set)} fit and {len(holdout_set)} "
                                     f"held-out images only (asked for {fit} and {holdout})")
            return self.subset(range(fit)), self.subset(range(fit, fit + holdout))

    return _FixedSplit(torch.cat([fit_set.pixels, holdout_set.pixels]),
                       torch.cat([fit_set.labels, holdout_set.labels]), list(fit_set.names) + list(holdout_set.names),
                       list(fit_set.skipped), fit_set.source)


def environment(device: str, seconds: float) -> dict[str, Any]:
    """Library versions, Python, platform, device, seconds: recorded in every study's JSON."""
    import numpy
    import torch
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        import plotly

        versions["plotly"] = plotly.__version__
    except ImportError:
        pass
    from .. import __version__ as uap_version

    return {"uap_explorer": uap_version, **versions, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device), "seconds": round(seconds, 3),
            "cpu_threads": torch.get_num_threads()}



def table_csv(rows: list[dict[str, Any]]) -> str:
    """Rows (flat dicts) as CSV text; the columns are the union of the keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: jsonable(v) for k, v in row.items()})
    return buffer.getvalue()


def write_outputs(result: StudyResult, figure, out_dir: str | os.PathLike, png: bool | None = None) -> list[Path]:
    """Write ``<study>.csv`` (main table), ``<study>_<table>.csv`` (others), ``<study>.json`` (settings,
    summary, environment, all tables), ``<study>.html`` (the Plotly figure, self-contained) and, when ``png``
    (None: when kaleido and a Chromium are available), ``<study>.png``. Every file is written atomically
    (temporary file + rename). Returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        written.append(path)

    for i, (name, rows) in enumerate(result.tables.items()):
        stem = result.study if i == 0 else f"{result.study}_{name}"
        write(out / f"{stem}.csv", table_csv(rows).encode())
    write(out / f"{result.study}.json", json.dumps(jsonable(result.as_json()), indent=1).encode())
    write(out / f"{result.study}.html", figure.to_html(include_plotlyjs=True, full_html=True).encode())
    if png is None:
        png = png_available()
    if png:
        height = int(figure.layout.height or 650)  # a figure's own height (e.g. stacked panels), else 650
        write(out / f"{result.study}.png", figure.to_image(format="png", width=1100, height=height, scale=1))
    return written


def png_available() -> bool:
    """True when kaleido is installed and finds a Chromium to render with."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return False
    import shutil

    return any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome"))
