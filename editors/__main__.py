"""Command line for the first-frame editors.

    python -m editors list
    python -m editors run --editor NAME (--video V | --image I) --out F.png [--instruction TEXT]
        [--style-image S] [--edited-image E] [--model ID_OR_DIR] [--steps N] [--seed S] [--candidates N] ...
    python -m editors export-frame --video V --out F.png        (the first frame exactly as the engine sees it)
    python -m editors make-tiny-model --editor NAME DIR
    python -m editors convert-anydoor CKPT OUT_DIR     (the official AnyDoor checkpoint -> a model folder, once)
    python -m editors convert-instantid SRC OUT_DIR    (InstantX/InstantID's ip-adapter.bin -> safetensors, once)

`run` writes F.png (candidate 0, the given seed) and, with --candidates N > 1, F-1.png ... F-(N-1).png
(candidate i used seed + i). With --video the first frame is prepared by the engine's own code
(--width/--height/--resize-mode/--fps/--start-time, default 512x512 center crop); with --image the image is
fitted the same way. Errors print one line, `error: ...`, on stderr and exit 1 (usage errors exit 2) with no
output file left behind.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from anyv2v.errors import AnyV2VError
from anyv2v.video import load_image

from . import available_editors, get_editor
from .base import MAX_CANDIDATES, Editor, EditorError, EditorInput
from .frames import candidate_paths, check_writable, first_frame, fit_image, save_candidates
from .manual import export_source_frame

# The CLI's own --image is the frame to edit, so the manual editor's `image` input is --edited-image.
_FLAG_OVERRIDES = {"image": "edited-image"}


def flag_for(input_name: str) -> str:
    return "--" + _FLAG_OVERRIDES.get(input_name, input_name.replace("_", "-"))


def _input_specs() -> dict[str, list[tuple[Editor, EditorInput]]]:
    """Input name -> the editors declaring it (each input becomes one flag shared by those editors)."""
    specs: dict[str, list[tuple[Editor, EditorInput]]] = {}
    for editor in available_editors().values():
        for spec in editor.inputs:
            specs.setdefault(spec.name, []).append((editor, spec))
    return specs


def _describe(spec: EditorInput) -> str:
    if spec.required:
        parts = ["required"]
    elif isinstance(spec.default, (int, float)):
        parts = [f"default {spec.default:g}"]
    else:
        parts = [f"default {spec.default!r}" if spec.default is not None else "optional"]
    if spec.describe_range():
        parts.append(f"range {spec.describe_range()}")
    if spec.choices:
        parts.append(f"one of {', '.join(spec.choices)}")
    return ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m editors", description="First-frame editors for AnyV2V.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("list", help="list the editors, their inputs and models").set_defaults(func=cmd_list)

    run = commands.add_parser("run", help="edit a first frame and write the candidates as PNG")
    run.set_defaults(func=cmd_run)
    run.add_argument("--editor", required=True, help="editor name (see `list`)")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="edit the first frame of this video")
    source.add_argument("--image", help="edit this image (fitted to the working size like a video frame)")
    run.add_argument("--out", required=True, help="output PNG; candidates i > 0 go to OUT-i.png")
    run.add_argument("--model", help="hub id, local folder or file of the editor's model (default: see `list`)")
    run.add_argument(
        "--candidates", type=int, default=1, help=f"number of candidates, seeds seed..seed+N-1 (1..{MAX_CANDIDATES})"
    )
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    run.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), help="default: float16 on cuda, float32 on cpu"
    )
    _add_video_options(run)
    run.add_argument("--overwrite", action="store_true", help="replace existing output files")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress lines on stderr (default: only when stderr is a terminal, so logs hold just the result)",
    )
    inputs = run.add_argument_group("editor inputs (each editor uses its own; see `list`)")
    for name, users in _input_specs().items():
        kinds = {spec.kind for _, spec in users}
        choices = sorted({choice for _, spec in users for choice in spec.choices})
        metavar = (
            "PATH" if kinds <= {"image", "mask"} else "TEXT" if kinds == {"text"}
            else "{" + ",".join(choices) + "}" if kinds == {"choice"} else "N"
        )
        used_by = "; ".join(f"{editor.name}: {_describe(spec)}" for editor, spec in users)
        # Values stay strings here: each editor's input checks and converts them, with its own message.
        inputs.add_argument(flag_for(name), dest=f"input_{name}", metavar=metavar, default=None, help=used_by)

    export = commands.add_parser("export-frame", help="write a video's first frame exactly as the engine prepares it")
    export.set_defaults(func=cmd_export)
    export.add_argument("--video", required=True)
    export.add_argument("--out", required=True, help="output PNG")
    _add_video_options(export)
    export.add_argument("--overwrite", action="store_true")

    tiny = commands.add_parser("make-tiny-model", help="save a tiny random model of an editor's real classes")
    tiny.set_defaults(func=cmd_tiny)
    tiny.add_argument("--editor", required=True)
    tiny.add_argument("directory", help="new (or empty) folder")

    convert = commands.add_parser(
        "convert-instantid", help="convert a download of InstantX/InstantID into the folder the instantid editor loads"
    )
    convert.set_defaults(func=cmd_convert_instantid)
    convert.add_argument("src", help="folder downloaded from InstantX/InstantID (ControlNetModel/, ip-adapter.bin)")
    convert.add_argument("out_dir", help="new folder for ControlNetModel/ + ip-adapter.safetensors (ANYV2V_INSTANTID_MODEL)")

    anydoor = commands.add_parser(
        "convert-anydoor", help="convert the official AnyDoor checkpoint to a model folder (run once, with internet)"
    )
    anydoor.set_defaults(func=cmd_convert_anydoor)
    anydoor.add_argument("checkpoint", help="epoch=1-step=8687.ckpt (or a weights-only copy / .safetensors)")
    anydoor.add_argument("out_dir", help="new (or empty) folder for the converted model, e.g. models/anydoor")
    anydoor.add_argument(
        "--image-encoder", default="facebook/dinov2-giant", help="DINOv2 ViT-g/14 hub id or local folder to copy in"
    )
    anydoor.add_argument("--original-config", help="LDM model YAML (default: the built-in configs/anydoor.yaml)")
    anydoor.add_argument(
        "--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="stored precision (float16)"
    )
    return parser


def _add_video_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=512, help="working width (default 512)")
    parser.add_argument("--height", type=int, default=512, help="working height (default 512)")
    parser.add_argument("--resize-mode", default="crop", help="crop (scale + center crop, default) or keep_aspect")
    parser.add_argument("--fps", type=float, default=8, help="sampling rate used to find the first frame (default 8)")
    parser.add_argument("--start-time", type=float, default=0.0, help="seconds into the video (default 0)")


def cmd_list(args: argparse.Namespace) -> int:
    for editor in available_editors().values():
        print(f"{editor.name}  ({editor.title})")
        print(f"  {editor.description}")
        for index, (role, model_id) in enumerate(editor.model_ids.items()):
            # --model and the env variable replace the first role's model (`Editor.default_model`).
            override = f"; override with --model or {editor.model_env}" if editor.model_env and index == 0 else ""
            print(f"  model {role}: {model_id}{override}")
        if not editor.model_ids:
            print("  model: none")
        print(f"  candidates: {'yes (seed + i)' if editor.supports_candidates else 'one result'}")
        for spec in editor.inputs:
            print(f"    {flag_for(spec.name):18} {spec.kind:6} {_describe(spec)}. {spec.help}".rstrip())
        print()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    editor = get_editor(args.editor)
    given = {
        key[len("input_") :]: value
        for key, value in vars(args).items()
        if key.startswith("input_") and value is not None
    }
    declared = [spec.name for spec in editor.inputs]
    unused = [name for name in given if name not in declared]
    if unused:
        wanted = ", ".join(flag_for(name) for name in declared) or "none"
        raise EditorError(
            f"{', '.join(flag_for(name) for name in unused)} is not an input of the {editor.name} editor "
            f"(its inputs: {wanted})."
        )
    if args.candidates != 1 and not editor.supports_candidates:
        raise EditorError(f"the {editor.name} editor makes one result; drop --candidates.")
    # Check everything cheap before any model work, so bad input fails fast and writes nothing.
    values = editor.validate_inputs({**given, "resize_mode": args.resize_mode})
    paths = candidate_paths(args.out, args.candidates if editor.supports_candidates else 1)
    check_writable(paths, args.overwrite)
    if args.video:
        frame = first_frame(
            args.video,
            fps=args.fps,
            width=args.width,
            height=args.height,
            resize_mode=args.resize_mode,
            start_time=args.start_time,
        )
    else:
        frame = fit_image(load_image(args.image), args.width, args.height, args.resize_mode)
    show_progress = _wants_progress(args)
    images = editor.edit(
        frame,
        values,
        candidates=args.candidates,
        progress=_ProgressPrinter(editor.name) if show_progress else None,
        model=args.model,
        device=args.device,
        dtype=args.dtype,
    )
    for path in save_candidates(images, args.out, args.overwrite):
        print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = export_source_frame(
        args.video,
        args.out,
        fps=args.fps,
        width=args.width,
        height=args.height,
        resize_mode=args.resize_mode,
        start_time=args.start_time,
        overwrite=args.overwrite,
    )
    print(path)
    return 0


def cmd_tiny(args: argparse.Namespace) -> int:
    editor = get_editor(args.editor)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its "Writing model shards" bar: one line is all this prints
    path = editor.make_tiny_model(args.directory)
    print(f"wrote a tiny random {editor.title} model to {path}")  # the same kind of line as python -m anyv2v's
    return 0


def cmd_convert_instantid(args: argparse.Namespace) -> int:
    from .instantid.convert import convert_instantid

    print(convert_instantid(args.src, args.out_dir))
    return 0


def cmd_convert_anydoor(args: argparse.Namespace) -> int:
    from .anydoor.convert import convert_anydoor

    out = convert_anydoor(
        args.checkpoint,
        args.out_dir,
        image_encoder=args.image_encoder,
        original_config=args.original_config,
        dtype=args.dtype,
        report=lambda message: print(f"convert-anydoor: {message}", file=sys.stderr, flush=True),
    )
    print(out)
    return 0


# A value that starts like a negative number: "-10,-10,20,20", "-5", "-.5", "-inf".
_NEGATIVE_VALUE = re.compile(r"-(\d|\.\d|inf|nan)", re.IGNORECASE)


def join_negative_values(argv: Sequence[str]) -> list[str]:
    """`--box -10,-10,20,20` as `--box=-10,-10,20,20`: argparse would take a value starting with '-' (other than a
    plain number) for an option and fail; for the editor inputs, which all take a value, it is the value."""
    flags = {flag_for(name) for name in _input_specs()}
    out: list[str] = []
    for token in argv:
        if out and out[-1] in flags and _NEGATIVE_VALUE.match(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _wants_progress(args: argparse.Namespace) -> bool:
    return args.progress if args.progress is not None else sys.stderr.isatty()


class _ProgressPrinter:
    """Progress on stderr, one line per new message stage and at most every 10%."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last_tenth = -1

    def __call__(self, fraction: float, message: str) -> None:
        tenth = int(fraction * 10)
        if fraction <= 0 or tenth > self.last_tenth:
            self.last_tenth = max(self.last_tenth, tenth)
            print(f"{self.label}: [{fraction * 100:3.0f}%] {message}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    # Quiet the model libraries' info logs on the command line (a user's own setting wins).
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(join_negative_values(argv))  # usage errors: argparse prints them, exit 2
    if args.command == "run" and not _wants_progress(args):
        # Also no weight-loading bars (model libraries read this when they are first imported, below).
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return int(args.func(args))
    except EditorError as exc:  # the command line's own wording, with the operator's details (paths, installs)
        print(f"error: {' '.join(exc.cli_text().split())}", file=sys.stderr)
    except AnyV2VError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
    except MemoryError:
        print("error: out of memory; lower the resolution or the number of candidates.", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except OSError as exc:  # the disk or the file system refused (full, read-only, permissions)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: the file system refused: {exc.strerror or _one_line(exc)}{where}.", file=sys.stderr)
    except Exception as exc:  # never a traceback: a library failure becomes one line with what to check
        print(f"error: {_failure_line(args, exc)}", file=sys.stderr)
    return 1


def _failure_line(args: argparse.Namespace, exc: BaseException) -> str:
    detail = _one_line(exc)
    if len(detail) > 300:
        detail = detail[:300] + "..."
    detail = f"{type(exc).__name__}: {detail}"
    editor = getattr(args, "editor", None)
    if args.command == "run" and getattr(args, "model", None):
        return (
            f"the {editor} editor could not run with model {args.model} ({detail}); check that this is a model "
            f"for the {editor} editor (`python -m editors list` shows the expected one)."
        )
    if editor:
        return f"the {editor} editor failed ({detail})."
    return f"{args.command} failed ({detail})."


if __name__ == "__main__":
    sys.exit(main())
