"""The command line: ``python -m uap_core {list-models, generate, evaluate, transfer, race, study}``.

Thin over run.py, artifacts.py and transfer.py. Errors print one line on stderr and exit 2; Ctrl-C during
``generate`` stops the run and still saves the best perturbation so far.

``generate``, ``evaluate`` and ``transfer`` also run as several processes under torchrun
(``torchrun --nproc_per_node N -m uap_core generate …``; multi-node with torchrun's --nnodes/--rdzv-* flags): the
process group is joined from torchrun's variables (NCCL on CUDA, gloo on the CPU; see uap_core/distributed.py),
and rank 0 alone prints and writes, after every rank has finished. ``--stream`` reads large image sets from disk
batch by batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import distributed
from .algorithms import ALGORITHMS
from .checkpoint import CheckpointSettings
from .errors import UAPError, first_line
from .jsonable import jsonable
from .params import describe
from .run_types import MODEL_HELP, RunConfig
from .presets import RaceSettings
from .seeds import SeedSettings

EXIT_ERROR = 2


def _algorithm_options() -> dict[str, dict[str, Any]]:
    """Every hyperparameter of every algorithm: option name → field description (+ which algorithms have it)."""
    options: dict[str, dict[str, Any]] = {}
    for name, algorithm in ALGORITHMS.items():
        for field in describe(algorithm.Params):
            entry = options.setdefault(field["name"], {**field, "algorithms": [], "per_algorithm": []})
            entry["algorithms"].append(name)
            entry["per_algorithm"].append((name, field))
    for entry in options.values():  # one help text; where methods mean different things by a name, each says its own
        uses = entry["per_algorithm"]
        if len({(f["help"], f["default"], f["choices"]) for _, f in uses}) == 1:
            entry["help_text"] = f"{entry['help']} [{', '.join(entry['algorithms'])}; default {entry['default']}]"
        else:
            entry["help_text"] = " | ".join(
                f"{name}: {f['help']} (default {f['default']}"
                + (f"; one of {', '.join(map(str, f['choices']))})" if f["choices"] else ")") for name, f in uses)
    return options


def _program_name() -> str:
    """How the user started the CLI: the installed ``uap`` command, or ``python -m uap_core``."""
    return "uap" if Path(sys.argv[0]).stem == "uap" else "python -m uap_core"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_program_name(), description="Universal adversarial perturbations: "
                                     "generate, evaluate and transfer them.")
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list-models", help="the model registry and what each needs",
                                  epilog="Besides these names, --model takes: " + "; ".join(_dynamic_forms()),
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--download", metavar="MODEL", nargs="+",
                         help="download these torchvision (or timm:ARCH) weights now")

    generate = commands.add_parser("generate", help="fit a UAP and save it",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_setting_options(generate, RunConfig)
    add_setting_options(generate, SeedSettings)  # --seeds 0,1,2: one run (and artifact) each, and their spread
    generate.add_argument("--out", default="uaps", help="folder for the .safetensors/.json/.png artifact "
                          "(with --resume: the checkpoint's folder)")
    generate.add_argument("--name", default=None, help="artifact name (default: model_algorithm_norm_eps_seed; with "
                          "--resume: the checkpoint's)")
    add_setting_options(generate.add_argument_group("long runs: checkpoints and resume"), CheckpointSettings)
    generate.add_argument("--json", action="store_true", help="print one final JSON object on stdout")
    generate.add_argument("--record", action="store_true",
                          help="also save the run's recording beside the artifact (NAME.recording.npz: every step's "
                               "metrics, the held-out evaluations, δ at a few steps; replayed in the app)")
    _add_scale_options(generate, "the held-out images")
    hyper = generate.add_argument_group("algorithm hyperparameters (paper defaults when omitted)")
    for name, field in _algorithm_options().items():
        hyper.add_argument(field["flag"], dest=f"param_{name}", default=None, help=field["help_text"])

    evaluate = commands.add_parser("evaluate", help="measure a saved UAP on a model and images")
    evaluate.add_argument("--uap", required=True)
    evaluate.add_argument("--model", default="efficientnet_lite0", help=MODEL_HELP)
    evaluate.add_argument("--images", default="samples")
    evaluate.add_argument("--limit", type=int, default=None, help="use at most this many images")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--weights", default=None)
    evaluate.add_argument("--json", action="store_true")
    _add_scale_options(evaluate, "the images")

    transfer = commands.add_parser("transfer", help="fooling-ratio matrix: UAPs (rows) × models (columns)")
    transfer.add_argument("--uap", nargs="+", required=True)
    transfer.add_argument("--models", nargs="+", required=True)
    transfer.add_argument("--images", default="samples")
    transfer.add_argument("--limit", type=int, default=None)
    transfer.add_argument("--device", default="auto")
    transfer.add_argument("--json", action="store_true")
    _add_scale_options(transfer, "the images")
    race = commands.add_parser("race", help="the classroom race: methods side by side on the embedded photos "
                                             "(uap_core.presets.race_config), each once per seed",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_setting_options(race, RaceSettings)
    add_setting_options(race, SeedSettings)
    race.add_argument("--json", action="store_true", help="print one JSON object: each method's spread")
    _add_study_parser(commands)
    app = commands.add_parser("app", help="start the explorer (Streamlit) on the bundled pages",
                              description="Start the Streamlit app (the Home page and its five pages). Options "
                                          "after the command go to `streamlit run`, e.g. `uap app "
                                          "--server.port 8502 --server.headless true`.")
    app.set_defaults(streamlit_options=[])  # every option after `app` (main passes the ones it does not know)
    return parser


def shown_default(value: Any) -> Any:
    """A default as the command line shows it: a list comma-separated, a float that is k/255 as "k/255"."""
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, float) and 0 < value < 1 and math.isclose(value * 255, round(value * 255)):
        return f"{round(value * 255)}/255"
    return value


def add_setting_options(parser: Any, settings_class: type) -> None:
    """One option per setting of ``settings_class`` its declaration puts on the command line (``param(cli=…)``):
    its flag, default, choices and help (see uap_core.params); the value lands in ``args.<name>``."""
    for spec in describe(settings_class):
        if spec["cli"]:
            parser.add_argument(spec["flag"], dest=spec["name"], default=shown_default(spec["default"]),
                                choices=list(spec["choices"]) if spec["choices"] and not
                                spec["type"].startswith("list[") else None,  # a list: each element checked later
                                help=spec["help"].replace("%", "%%") or None)


def _add_scale_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--stream and --workers (large image sets; see uap_core.images.ImageStream)."""
    from .images import STREAM_ABOVE, STREAM_CHOICES

    group = parser.add_argument_group("large image sets (streaming) and torchrun")
    group.add_argument("--stream", default="auto", choices=list(STREAM_CHOICES),
                       help=f"read {what} from disk batch by batch in DataLoader worker processes instead of decoding "
                            f"all of them first; the same results (auto: a folder of more than {STREAM_ABOVE} images)")
    group.add_argument("--workers", type=int, default=None,
                       help="DataLoader processes decoding a streamed set (default: this machine's cores shared by "
                            "its ranks, at most 8; 0: decode in the main process)")


# ---------------------------------------------------------------------------------------------- commands
def cmd_list_models(args: argparse.Namespace) -> int:
    from .models import get_spec, list_models, load_model

    for name in args.download or []:
        get_spec(name)
        load_model(name, "cpu", download=True)
        print(f"{name}: weights downloaded", file=sys.stderr)
    statuses = list_models()
    if args.json:
        print(json.dumps([{"name": s.spec.name, "title": s.spec.title, "state": s.state, "detail": s.detail,
                           "input_size": s.spec.input_size} for s in statuses], indent=1))
        return 0
    width = max(len(s.spec.name) for s in statuses)
    for s in statuses:
        print(f"{s.spec.name:<{width}}  {s.spec.input_size:>3}px  {s.state:<18} {s.detail}")
    print("\nalso accepted as --model (resolved on demand):")
    for form in _dynamic_forms():
        print(f"  {form}")
    return 0


def _dynamic_forms() -> tuple[str, ...]:
    from .models import DYNAMIC_FORMS

    return DYNAMIC_FORMS


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .seeds import parse_seeds, spread_summary

    resume = load_checkpoint(args.resume) if args.resume else None
    given = _given_options(getattr(args, "argv", sys.argv[1:])) if resume is not None else set()
    algorithm = args.algorithm if resume is None or "algorithm" in given else resume.config.algorithm
    chosen = ALGORITHMS[algorithm]
    allowed = {f["name"] for f in describe(chosen.Params)}
    params = {}
    for key, value in vars(args).items():
        if key.startswith("param_") and value is not None:
            name = key[len("param_"):]
            if name not in allowed:
                raise UAPError(f"--{name.replace('_', '-')} does not apply to {algorithm}; its options: "
                               + ", ".join("--" + a.replace("_", "-") for a in sorted(allowed)))
            params[name] = value
    settings = [spec["name"] for spec in describe(RunConfig) if spec["cli"]] + ["stream", "workers"]
    if resume is None:
        config = RunConfig(**{name: getattr(args, name) for name in settings}, params=params)
    else:  # the checkpoint's settings; the options given must agree with them (or change where/how long it runs)
        config = resume.resumed_config({**{name: getattr(args, name) for name in settings if name in given},
                                        "params": params})
    seeds = parse_seeds(args.seeds)
    if not seeds:
        summary = _generate_one(args, config, resume=resume, given=given)
        if summary is not None and args.json:
            print(json.dumps(jsonable(summary)))
        return 0
    if resume is not None:
        raise UAPError("--seeds cannot be combined with --resume: a checkpoint continues one run (resume each seed's "
                       "checkpoint on its own)")
    summaries = []
    for seed in seeds:
        summaries.append(_generate_one(args, dataclasses.replace(config, seed=seed), seed_in_name=len(seeds) > 1))
        if summaries[-1] is not None and summaries[-1]["reason"] == "stopped":  # Ctrl-C: no further seed
            break
    if not distributed.is_main():
        return 0
    spread = spread_summary(summaries)
    if args.json:
        print(json.dumps(jsonable(spread)))
    else:
        fr, noise = spread["fooling_ratio"], spread["random_fooling_ratio"]
        print(f"{len(seeds)} seeds: held-out fooling ratio {fr['mean']:.3f} ± {fr['sd']:.3f} (s.d.; min "
              f"{fr['min']:.3f}, max {fr['max']:.3f}); random noise {noise['mean']:.3f} ± {noise['sd']:.3f}")
    return 0


def _generate_one(args: argparse.Namespace, config: RunConfig, resume: Any = None, given: set[str] = frozenset(),
                  seed_in_name: bool = False) -> dict | None:
    """One run of ``generate`` (or its continuation from the checkpoint ``resume``): progress on stderr, checkpoints
    if asked for, the artifact saved; its summary (None on a rank other than 0)."""
    import signal

    from .artifacts import save_uap
    from .checkpoint import FINISHED, CheckpointPolicy, artifact_name, checkpoint_path
    from .library import safe_name
    from .run import Run

    validated = config.validated()
    out_text = args.out if resume is None or "out" in given else str(resume.path.parent)
    every = args.checkpoint_every if args.checkpoint_every is not None or resume is None else resume.every
    main_rank = distributed.is_main()  # under torchrun only rank 0 prints and writes
    out = _output_folder(out_text) if main_rank else None  # checked before the run, so a bad --out costs no run
    eps255 = f"{validated.eps * 255:g}".replace(".", "p")
    default_name = f"{validated.model}_{validated.algorithm}_{validated.norm}_{eps255}_seed{validated.seed}"
    if args.name:
        name = safe_name(args.name + (f"_seed{validated.seed}" if seed_in_name else ""))
    else:
        name = safe_name(artifact_name(resume.path) if resume is not None else default_name)
    chosen = ALGORITHMS[validated.algorithm]
    bar = None
    interactive = sys.stderr.isatty() and not args.json and main_rank

    def say(message: str) -> None:
        (bar.write(message, file=sys.stderr) if bar is not None else print(message, file=sys.stderr))

    policy = (CheckpointPolicy.every_text(checkpoint_path(out, name), every, lambda m: say(f"warning: {m}"))
              if (every is not None or resume is not None) and main_rank else None)  # resumed: kept up to date
    run = Run(config, checkpoints=policy, resume=resume)

    def interrupted(_signum, _frame) -> None:  # the first Ctrl-C: end after this step, keep the best δ so far
        say("stopping after the current step (Ctrl-C again to abort)…")
        run.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = None if distributed.is_active() else signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread (called from a test's worker): no handler
        previous = None
    recorder = _recorder(args.record and main_rank)
    try:
        for event in run.events():
            if recorder is not None:
                recorder.observe(event, run)
            if event.kind == "start":
                bar = _progress(event.data["total_steps"], interactive)
                if not args.json and main_rank:
                    resumed = (f" · resumed at step {event.data['resumed_from_step']} from {resume.path}"
                               if resume is not None else "")
                    print(f"{event.data['model_title']} · {event.data['algorithm_title']} · {event.data['device']} "
                          f"({event.data['precision']}) · fit {event.data['fit_images']} / held-out "
                          f"{event.data['heldout_images']} images · random-noise fooling ratio "
                          f"{event.data['random_fooling_ratio']:.3f}{resumed}", file=sys.stderr)
            elif event.kind == "step" and bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{event.data['loss']:.3f}", batch_fr=f"{event.data['batch_fooling_ratio']:.2f}")
            elif event.kind == "eval" and not args.json and main_rank:
                say(f"step {event.step}: held-out fooling ratio {event.data['fooling_ratio']:.3f}, "
                    f"dominant share {event.data['dominant_share']:.2f}")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    result = run.result
    if result is None:
        raise UAPError("the run ended before producing a result")
    scale = _finish_ranks(result.seconds)
    if not main_rank:
        return None
    path = save_uap(result.delta, result.metadata(), out / f"{name}.safetensors")
    summary = {**result.summary(), "artifact": str(path), **scale}
    if policy is not None:
        if result.reason in FINISHED:
            policy.remove()  # the run is done and saved: nothing left to continue
        elif policy.written_step is not None:
            summary["checkpoint"] = str(policy.path)
    if recorder is not None:
        from .provenance import generate_command
        from .recording import recording_path, save_recording

        recording = recorder.finish(run, command=generate_command(result.config, chosen.Params, extra=("--record",)),
                                    title=name)
        summary["recording"] = str(save_recording(recording, recording_path(path)))
    if not args.json:
        rate = (f"; fooling rate {summary['fooling_rate']:.3f} (1 − accuracy on {summary['labelled_images']} labelled)"
                if summary.get("fooling_rate") is not None else "")
        print(f"held-out fooling ratio {summary['fooling_ratio']:.3f} (random noise {summary['random_fooling_ratio']:.3f}){rate}; "
              f"dominant label {summary['dominant_name']!r} takes {summary['dominant_share']:.0%}; "
              f"{summary['seconds']:.1f} s, {summary['reason']}; saved {path}")
        if "checkpoint" in summary:
            print(f"to continue: {_program_name()} generate --resume {summary['checkpoint']}", file=sys.stderr)
    return summary


def cmd_race(args: argparse.Namespace) -> int:
    """Each method of the race once per seed; its spread (mean ± s.d. of the held-out fooling ratio) per method."""
    from .params import parse_params
    from .presets import PROTOCOL_CAPTIONS, run_race
    from .seeds import parse_seeds

    settings = parse_params(RaceSettings, {s["name"]: getattr(args, s["name"]) for s in describe(RaceSettings)},
                            "setting")
    seeds = parse_seeds(args.seeds) or [0]

    def progress(method: str, seed: int, event: Any) -> None:
        if event.kind == "done" and not args.json:
            print(f"{method} seed {seed}: held-out fooling ratio {event.data['fooling_ratio']:.3f}, "
                  f"{event.data['steps']} steps, {event.data['image_gradients']} image-gradients, "
                  f"{event.data['seconds']:.0f} s", file=sys.stderr)

    outcome = {method: result.summary() for method, result in run_race(settings, seeds, progress).items()}
    if args.json:
        print(json.dumps(jsonable({"protocol": settings.protocol, "seeds": seeds, "methods": outcome})))
        return 0
    print(PROTOCOL_CAPTIONS[settings.protocol])
    for method, summary in outcome.items():
        fr = summary["fooling_ratio"]
        print(f"{method}: held-out fooling ratio {fr['mean']:.3f} ± {fr['sd']:.3f} over {len(seeds)} seed(s) "
              f"(random noise {summary['random_fooling_ratio']['mean']:.3f})")


def _given_options(argv: Sequence[str]) -> set[str]:
    """The generate options ``argv`` names itself (not filled in from their defaults): what --resume compares."""
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    for action in commands.choices["generate"]._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def _recorder(enabled: bool):
    """A :class:`uap_core.recording.Recorder` for ``generate --record`` (None when not asked for)."""
    if not enabled:
        return None
    from .recording import Recorder

    return Recorder()


def _load_for_model(path: str, model) -> Any:
    from .artifacts import load_uap

    return load_uap(path, expected_size=(model.spec.input_size,) * 2, resize=True)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .models import load_model
    from .transfer import evaluate_uap, images_for

    from .images import should_stream

    model = load_model(args.model, _device(args.device), weights=args.weights)
    artifact = _load_for_model(args.uap, model)
    started = time.perf_counter()
    images = images_for(model, args.images, args.limit, stream=should_stream(args.stream, args.images))
    result = evaluate_uap(artifact, model, images, workers=args.workers)
    scale = _finish_ranks(time.perf_counter() - started)
    if not distributed.is_main():
        return 0
    summary = {"uap": args.uap, "model": args.model, "images": images.source, **result.as_dict(), **scale}
    if args.json:
        print(json.dumps(jsonable(summary)))
    else:
        e = result.evaluation
        print(f"{args.uap} on {args.model}, {e.count} images ({images.source}):\n"
              f"  fooling ratio {e.fooling_ratio:.3f} (random noise {result.random_fooling_ratio:.3f})\n"
              f"  dominant label {e.histogram.dominant.name if e.histogram.dominant else '-'!r} "
              f"({e.histogram.dominant.share if e.histogram.dominant else 0:.0%} of images)"
              + (f"\n  top-1 accuracy {e.clean_accuracy:.3f} clean → {e.attacked_accuracy:.3f} attacked; fooling rate "
                 f"{e.fooling_rate:.3f} (1 − accuracy under δ, {e.labelled} labelled images)"
                 if e.clean_accuracy is not None else "")
              + (f"\n  (perturbation resized from {result.resized_from[0]}×{result.resized_from[1]})"
                 if result.resized_from else ""))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from .artifacts import load_uap
    from .transfer import transfer_matrix

    uaps = {}
    for path in args.uap:
        name = Path(path).stem
        while name in uaps:
            name += "'"
        uaps[name] = load_uap(path)
    started = time.perf_counter()
    matrix = transfer_matrix(uaps, args.models, args.images, _device(args.device), args.limit, stream=args.stream,
                             workers=args.workers, noise=True)
    scale = _finish_ranks(time.perf_counter() - started)
    if not distributed.is_main():
        return 0 if not matrix.errors or len(matrix.errors) < len(args.models) else EXIT_ERROR
    if args.json:
        print(json.dumps(jsonable({**matrix.as_dict(), **scale})))
    else:
        print(f"fooling ratio, {matrix.image_count} images (rows: UAPs, columns: models)")
        print(matrix.table())
        for model, error in matrix.errors.items():
            print(f"{model}: {error}", file=sys.stderr)
    return 0 if not matrix.errors or len(matrix.errors) < len(args.models) else EXIT_ERROR


# ---------------------------------------------------------------------------------------------- study
STUDY_OPTIONS = ("out", "json", "png")  # the study subcommand's own options: no setting may take these names


def _add_study_parser(commands: Any) -> None:
    """``study NAME [--setting value …] --out DIR [--json]``: one sub-subparser per registered study, its options
    built from the study's Settings (params.describe); lists are comma-separated. ``study --list`` / ``study
    list`` lists the studies."""
    from .studies import _MODULES, get_study

    study = commands.add_parser("study", help="run one of the papers' experiments and write its tables and figure",
                                description="Run a study (a paper's experiment): progress on stderr; "
                                            "<study>.csv / .json / .html (and .png with kaleido) in --out.")
    study.add_argument("--list", action="store_true", help="list the studies and exit")
    names = study.add_subparsers(dest="study", metavar="NAME")
    names.add_parser("list", help="list the studies and exit")
    for name in _MODULES:
        try:
            cls = get_study(name)
        except UAPError:  # not written yet
            continue
        except Exception as exc:  # noqa: BLE001 - a study that fails to import must not break the other commands
            names.add_parser(name, help=f"(cannot be loaded: {type(exc).__name__}: {exc})")
            continue
        sub = names.add_parser(name, help=cls.summary,
                               description=f"{cls.title}. {cls.summary} ({cls.paper})".replace("%", "%%"))
        group = sub.add_argument_group("settings (lists comma-separated; defaults as shown)")
        for spec in (spec for spec in describe(cls.Settings) if spec["cli"]):
            if spec["name"] in STUDY_OPTIONS:
                raise ValueError(f"study {name}: the setting {spec['name']!r} clashes with the option --{spec['name']}")
            extra = f"; one of {', '.join(map(str, spec['choices']))}" if spec.get("choices") else ""
            group.add_argument(spec["flag"], dest=f"setting_{spec['name']}", default=None,
                               metavar=spec["type"].upper().replace("LIST[", "").replace("]", ",…")
                               if spec["type"].startswith("list[") else spec["type"].upper(),
                               help=f"{spec['help']} (default {shown_default(spec['default'])}{extra})"
                               .replace("%", "%%"))
        sub.add_argument("--out", default="studies", help="folder for the outputs (default: studies)")
        sub.add_argument("--json", action="store_true",
                         help="print one JSON object (summary, files) on stdout instead of the file list")
        sub.add_argument("--png", default="auto", choices=["auto", "on", "off"],
                         help="also write <study>.png (needs kaleido and a Chromium; auto: when available)")


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study to the end (Ctrl-C: stop after the current step and write what is done)."""
    import signal

    from .studies import get_study, study_names, write_outputs
    from .studies.base import png_available

    if args.list or args.study in (None, "list"):
        if args.study is None and not args.list:
            raise UAPError("name a study: python -m uap_core study NAME [--setting value …] (study --list lists them)")
        for name in study_names():
            cls = get_study(name)
            print(f"{name:<20} {cls.summary}")
        return 0
    cls = get_study(args.study)
    values = {key[len("setting_"):]: value for key, value in vars(args).items()
              if key.startswith("setting_") and value is not None}
    study = cls(settings=values)  # a bad setting: ParameterError, one line, before anything runs
    out = _output_folder(args.out)
    if args.png == "on" and not png_available():
        raise UAPError("--png on needs the kaleido package and a Chromium (pip install kaleido)")

    def interrupted(_signum, _frame) -> None:
        print("stopping after the current step (Ctrl-C again to abort)…", file=sys.stderr)
        study.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread (e.g. called from a test's worker): no handler
        previous = None
    started = time.perf_counter()
    last_head, last_print = None, 0.0
    try:
        for progress in study.run():
            head = progress.message.split(":")[0]
            now = time.perf_counter()
            if head != last_head or now - last_print >= 5.0 or progress.fraction >= 1.0:
                print(f"[{progress.fraction:4.0%}] {progress.message}", file=sys.stderr, flush=True)
                last_head, last_print = head, now
    except KeyboardInterrupt:  # a second Ctrl-C during a step: keep the rows finished so far
        study.stop()
        study.finalise(time.perf_counter() - started)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    result = study.result
    assert result is not None
    paths = write_outputs(result, cls.figure(result), out, png={"auto": None, "on": True, "off": False}[args.png])
    if result.stopped:
        print("stopped: the outputs hold what was finished", file=sys.stderr)
    if args.json:
        print(json.dumps(jsonable({"study": result.study, "stopped": result.stopped, "summary": result.summary,
                                  "files": [str(p) for p in paths]})))
    else:
        for path in paths:
            print(path)
    return 0


def _device(name: str):
    from .models import resolve_device

    return distributed.local_device(resolve_device(name))  # under torchrun on CUDA: cuda:LOCAL_RANK


def _finish_ranks(seconds: float) -> dict[str, Any]:
    """Under torchrun: wait until every rank has finished (rank 0 writes nothing before), and return the job's
    figures for the JSON output ({"distributed": …}); a single process: {}."""
    if not distributed.is_active():
        return {}
    figures = distributed.summary(seconds)
    distributed.barrier("the check that every rank finished")
    return {"distributed": figures}


DISTRIBUTED_COMMANDS = ("generate", "evaluate", "transfer")



def cmd_app(args: argparse.Namespace) -> int:
    """``streamlit run <the bundled app.py> <its .streamlit settings> <the options given>``; on POSIX the process
    becomes Streamlit's (so a signal to it stops the server), elsewhere it waits for it."""
    import importlib.util
    import subprocess

    from .bundled import APP_SCRIPT, app_dir, streamlit_options

    folder = app_dir()
    if folder is None:
        raise UAPError("the app's files (app.py, pages/) are not installed beside uap_ui: reinstall the package "
                       "(pip install .) or run `streamlit run app.py` in a checkout")
    if importlib.util.find_spec("streamlit") is None:
        raise UAPError("the app needs Streamlit: pip install streamlit (or pip install -r requirements.txt)")
    command = [sys.executable, "-m", "streamlit", "run", str(folder / APP_SCRIPT), *streamlit_options(folder),
               *[option for option in args.streamlit_options if option != "--"]]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execv(sys.executable, command)
    return subprocess.call(command)


COMMANDS = {"list-models": cmd_list_models, "generate": cmd_generate, "evaluate": cmd_evaluate,
            "transfer": cmd_transfer, "study": cmd_study, "app": cmd_app, "race": cmd_race}


def _output_folder(text: str) -> Path:
    """The --out folder, created if needed; UAPError when it is a file or cannot be created or written."""
    out = Path(text).expanduser()
    if out.exists() and not out.is_dir():
        raise UAPError(f"--out {out} is a file, not a folder: name a folder for the artifacts")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UAPError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise UAPError(f"the output folder {out} is not writable")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "app":
        args.streamlit_options = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.argv = argv
    try:
        if args.command in DISTRIBUTED_COMMANDS and distributed.launched():
            distributed.init_from_env(_device(args.device))
        return COMMANDS[args.command](args)
    except UAPError as exc:
        print(f"error: {_rank_prefix()}{exc}", file=sys.stderr)
        return EXIT_ERROR
    except torch_oom() as exc:
        print(f"error: out of GPU memory ({first_line(exc)}); try a smaller --batch-size or --device cpu",
              file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a file system refusal anywhere (disk full, permissions): one line, not a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        distributed.shutdown()


def _rank_prefix() -> str:
    """"[rank r/R] " in a process torchrun started, else ""."""
    return f"[rank {os.environ.get('RANK', '?')}/{distributed.env_world_size()}] " if distributed.launched() else ""


def torch_oom() -> type[BaseException]:
    import torch

    return torch.OutOfMemoryError


if __name__ == "__main__":
    sys.exit(main())
