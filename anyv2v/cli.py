"""`python -m anyv2v`: edit, invert, make-tiny-model, convert-seine, convert-consisti2v, bench."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import warnings
from typing import Any

from .backbones import DEFAULT_BACKBONE, NAMES
from .config import PRESETS, EditConfig, preset_config
from .errors import OOM_ADVICE, AnyV2VError, ConfigError, quoted

# CLI flag -> EditConfig field, for flags that override a config file or preset.
_OVERRIDES = (
    "backbone", "inversion_save_steps", "model", "tau_conv", "tau_sa", "tau_ta", "start_index", "steps", "inversion_steps", "guidance",
    "negative_prompt", "random_ratio", "frames", "fps", "start_time", "seed", "device", "dtype",
    "cache_dir", "cache_max_gb", "resize_mode", "decode_chunk_size", "memory", "source_branch_frame",
    "frame_init", "frame_init_noise_level",
)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x512, got {quoted(text)}") from None
    return width, height


def _add_config_flags(parser: argparse.ArgumentParser, sampling: bool = True) -> None:
    group = parser.add_argument_group("settings (override --config and --preset)")
    group.add_argument(
        "--backbone", choices=NAMES,
        help="the video model: i2vgen-xl (default), seine (its defaults: guidance 4, empty negative prompt) or "
        "consisti2v (its defaults: 256x256, guidance 35, start index 4)",
    )
    group.add_argument(
        "--model",
        help="the backbone's weights: I2VGen-XL hub id or local diffusers folder (default ali-vilab/i2vgen-xl); "
        "SEINE: a folder from convert-seine (default $ANYV2V_SEINE_MODEL); ConsistI2V: hub id or a local copy "
        "(default TIGER-Lab/ConsistI2V or $ANYV2V_CONSISTI2V_MODEL)",
    )
    group.add_argument("--config", help="YAML file of settings")
    group.add_argument("--preset", choices=sorted(PRESETS), help="paper (500 inversion steps) or fast (100)")
    group.add_argument("--frames", type=int, help="frames to edit (default 16; 0 = the whole clip)")
    group.add_argument("--fps", type=int, help="sampling rate of the clip and the output (default 8)")
    group.add_argument("--start-time", type=float, help="seconds into the video to start (default 0)")
    group.add_argument("--size", type=_size, help="working size WxH (default 512x512; ConsistI2V 256x256)")
    group.add_argument("--resize-mode", choices=("crop", "keep_aspect"), help="crop (default) or keep_aspect")
    group.add_argument("--inversion-steps", type=int, help="DDIM inversion steps (default 500)")
    group.add_argument(
        "--inversion-save-steps", type=int, help="SEINE: the DDIM grid of kept latents (default half the inversion steps)"
    )
    group.add_argument("--seed", type=int, help="random seed (default 8888)")
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda if present)")
    group.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="default float16 on cuda, float32 on cpu")
    group.add_argument("--cpu-offload", action="store_true", default=None, help="keep models on the CPU until used")
    group.add_argument("--cache-dir", help="inversion cache folder")
    group.add_argument("--cache-max-gb", type=float, help="inversion cache budget in GB (0 disables the cache)")
    group.add_argument(
        "--memory", choices=("auto", "on", "off"),
        help="bounded-memory options for long clips (same output): auto (default: on only when needed), on, off",
    )
    if sampling:
        group.add_argument("--tau-conv", type=float, help="conv injection fraction of steps (default 0.2)")
        group.add_argument("--tau-sa", type=float, help="spatial attention Q/K injection fraction (default 0.2)")
        group.add_argument("--tau-ta", type=float, help="temporal attention Q/K injection fraction (default 0.5)")
        group.add_argument("--start-index", type=int, help="T': first sampling step (default 0; ConsistI2V 4)")
        group.add_argument("--steps", type=int, help="sampling steps (default 50)")
        group.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 9; SEINE 4, ConsistI2V 35)")
        group.add_argument("--negative-prompt", help="negative prompt")
        group.add_argument("--random-ratio", type=float, help="fresh noise blended into the start latent (default 0)")
        group.add_argument("--decode-chunk-size", type=int, help="frames decoded at once by the VAE (default 4)")
        group.add_argument(
            "--source-branch-frame", choices=("source", "edited"),
            help="first frame the source branch is conditioned on: source (the method as described; default) or "
            "edited (ConsistI2V's official code and its default there)",
        )
        group.add_argument(
            "--frame-init", action=argparse.BooleanOptionalAction, default=None,
            help="ConsistI2V: FrameInit, the start latent's low frequencies from the edited first frame (default off, "
            "as the official editing scripts; --no-frame-init turns a config file's off)",
        )
        group.add_argument(
            "--frame-init-noise-level", type=int, help="ConsistI2V: the noise level FrameInit diffuses to (default 850)"
        )
        group.add_argument("--keep-audio", action="store_true", default=None, help="keep the source audio, trimmed")


def _file_backbone(path: str | None) -> str | None:
    """The `backbone:` of a --config file, if it reads as one (load_yaml reports a bad file)."""
    import yaml

    try:
        data = yaml.safe_load(open(path).read()) if path else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    value = data.get("backbone") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def config_from_args(args: argparse.Namespace) -> EditConfig:
    # Precedence: defaults < the backbone's defaults < --preset (or the file's preset:) < the --config file < flags.
    flag = getattr(args, "backbone", None)
    backbone = flag or _file_backbone(args.config) or DEFAULT_BACKBONE
    config = preset_config(args.preset, backbone) if args.preset else None
    if args.config:
        config = EditConfig.load_yaml(args.config, base=config, backbone=flag)
    config = config or EditConfig.for_backbone(backbone)
    changes: dict[str, Any] = {}
    for name in _OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if "model" in changes:
        changes["model"] = os.path.expanduser(changes["model"])
    if getattr(args, "size", None):
        changes["width"], changes["height"] = args.size
    for flag in ("cpu_offload", "keep_audio"):
        if getattr(args, flag, None):
            changes[flag] = True
    return config.replace(**changes).validate()


class TqdmProgress:
    """One tqdm bar per engine stage."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage == "inversion_cached":
            print("inversion: reused from the cache", file=sys.stderr)
            return
        bar = self._bars.get(stage)
        if bar is None:
            unit = "frame" if stage in ("encode", "decode") else "step"  # long clips: frames and steps both count
            bar = self._bars[stage] = self._tqdm(total=total, desc=stage, unit=unit, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


LONG_EDIT_FRAMES = 16  # above this (or for the whole clip) the CLI prints a time estimate first


def print_estimate(config: EditConfig, frames: int) -> None:
    """One stderr line: the estimated time of this edit from its FLOPs and the device's measured speed."""
    from .bench import estimate_seconds

    try:
        estimate = estimate_seconds(config, frames=frames)
    except Exception:  # noqa: BLE001 - an estimate is a courtesy; the edit reports real problems itself
        return
    minutes = estimate["seconds"] / 60
    print(
        f"estimate: about {minutes:.1f} min for {frames} frames on {estimate['device']} "
        f"({estimate['flops']['total'] / 1e15:.2f} PFLOP; less when the inversion is cached)",
        file=sys.stderr,
    )


def cmd_edit(args: argparse.Namespace) -> int:
    from .pipeline import prepare_clip, run_edit

    config = config_from_args(args)
    prepared = None
    if config.frames == 0 or config.frames > LONG_EDIT_FRAMES:
        prepared = prepare_clip(args.video, config)
        print_estimate(config, len(prepared.frames))
    progress = TqdmProgress()
    try:
        result = run_edit(
            args.video, args.edited_frame, args.prompt, config, args.out, overwrite=args.overwrite, progress=progress,
            prepared=prepared,
        )
    finally:
        progress.close()
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    cached = "reused from cache" if result.inversion_from_cache else "computed and cached"
    print(f"wrote {result.video_path} ({result.frames} frames, {result.size[0]}x{result.size[1]}, {result.fps} fps; inversion {cached})")
    print(f"wrote {result.json_path}")
    return 0


def cmd_invert(args: argparse.Namespace) -> int:
    from collections import Counter

    from .backbones import backbone_class
    from .cache import InversionCache
    from .device import oom_guard
    from .pipeline import BACKBONES, get_inversion, prepare_clip

    config = config_from_args(args)
    config = config.replace(model=config.resolved_model())
    if config.cache_max_gb <= 0:
        raise ConfigError("invert fills the cache; --cache-max-gb 0 disables it.")
    if args.steps is not None:
        plan = backbone_class(config.backbone).timestep_plan(config.model)
        plan.check(args.steps, config.inversion_steps, config.inversion_save_steps)
    clip = prepare_clip(args.video, config)
    progress = TqdmProgress()
    calls: Counter = Counter()
    try:
        with oom_guard(OOM_ADVICE):
            backbone = BACKBONES.get(config.model, config.device, config.dtype, config.cpu_offload, config.backbone)
            cache = InversionCache(config.cache_dir, int(config.cache_max_gb * 2**30))
            # With --steps keep the latents that step count reads; without, every latent (serves any count).
            served = config.replace(steps=args.steps) if args.steps is not None else config
            inversion, from_cache = get_inversion(
                backbone, clip, served, cache, calls, progress, keep_all=args.steps is None
            )
    finally:
        progress.close()
    state = "already cached" if from_cache else f"inverted with {sum(calls.values())} UNet calls and cached"
    print(f"{args.video}: {state} in {config.cache_dir} (key {inversion.key})")
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from .backbones import backbone_class

    if os.path.exists(args.dir) and os.listdir(args.dir) and not args.overwrite:
        raise AnyV2VError(f"{args.dir} is not empty; choose a new folder or pass --overwrite.")
    if args.real_size and args.mid_size:
        raise ConfigError("choose one of --real-size and --mid-size.")
    size = "real" if args.real_size else "mid" if args.mid_size else "tiny"
    path, what = backbone_class(args.backbone).make_random_model(args.dir, args.seed, size)
    print(f"wrote {what} to {path}")
    return 0


def cmd_convert_seine(args: argparse.Namespace) -> int:
    from .backbones.seine.convert import convert_seine

    path = convert_seine(args.checkpoint, args.sd, args.out_dir)
    print(f"wrote {path} (SEINE UNet + SD-1.4 VAE, text encoder, tokenizer; load it with --backbone seine --model {path})")
    return 0


def cmd_convert_consisti2v(args: argparse.Namespace) -> int:
    from .backbones.consisti2v.convert import convert_consisti2v

    path = convert_consisti2v(args.source, args.out_dir)
    print(f"wrote {path} (safetensors; load it with --backbone consisti2v --model {path})")
    return 0


def _without_flags(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv minus `flags` and their values (both `--flag value` and `--flag=value`)."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token in flags:
            skip = True
        elif not token.startswith(tuple(f"{flag}=" for flag in flags)):
            kept.append(token)
    return kept


def _frame_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--frames-sweep must be frame counts separated by commas (e.g. 16,32,64), got {quoted(text)}.") from None
    if not counts or any(not 2 <= n <= 512 for n in counts):
        raise ConfigError(f"--frames-sweep frame counts must be between 2 and 512, got {quoted(text)}.")
    return counts


def cmd_bench_sweep(args: argparse.Namespace) -> int:
    """One bench process per frame count (a clean peak memory each), one JSON line per count."""
    import subprocess

    counts = _frame_counts(args.frames_sweep)
    base = _without_flags(args.argv, ("--frames-sweep", "--frames", "--latents-out"))
    for frames in counts:
        cmd = [sys.executable, "-m", "anyv2v", *base, "--frames", str(frames), "--json-line"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            message = (done.stderr.strip().splitlines() or ["failed"])[-1].removeprefix("error: ")
            print(json.dumps({"frames": frames, "error": message}), flush=True)
            continue
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import edit_flops, peak_memory, reference_unet_calls, unet_flops_per_call
    from .pipeline import BACKBONES, run_edit

    if args.frames_sweep:
        return cmd_bench_sweep(args)
    config = config_from_args(args)
    with tempfile.TemporaryDirectory(prefix="anyv2v-bench-") as workdir:
        if args.cache_dir is None:
            config = config.replace(cache_dir=os.path.join(workdir, "cache"))  # measure a real inversion
        result = run_edit(args.video, args.edited_frame, args.prompt, config, os.path.join(workdir, "bench.mp4"))
        model = config.resolved_model()
        backbone = BACKBONES.get(model, config.device, config.dtype, config.cpu_offload, config.backbone)
        width, height = result.size
        per_call = unet_flops_per_call(
            dict(backbone.unet.config), result.frames, height, width, backbone.vae_scale_factor, config.backbone
        )
        flops = edit_flops(result.unet_calls, per_call)
        reference_calls = reference_unet_calls(config.inversion_steps, config.steps, config.backbone, config.start_index)
        reference = edit_flops(reference_calls, per_call)
        report = {
            "backbone": config.backbone,
            "model": model,
            "device": str(backbone.device),
            "device_name": torch_device_name(backbone.device),
            "dtype": str(backbone.dtype).removeprefix("torch."),
            "frames": result.frames,
            "size": [width, height],
            "steps": config.steps,
            "inversion_steps": config.inversion_steps,
            "taus": {"conv": config.tau_conv, "spatial": config.tau_sa, "temporal": config.tau_ta},
            "memory": result.memory,
            "inversion_from_cache": result.inversion_from_cache,
            "unet_calls": result.unet_calls,
            "unet_flops_per_call_batch1": per_call,
            "flops_per_edit": flops,
            "reference_unet_calls": reference_calls,
            "reference_flops_per_edit": reference["total"],
            "flops_ratio_vs_reference": round(flops["total"] / reference["total"], 4),
            "seconds": result.seconds,
            "seconds_total": round(sum(result.seconds.values()), 4),
            "peak_memory": peak_memory(backbone.device),
        }
        if args.latents_out:
            from safetensors.torch import save_file

            save_file({"latents": result.latents.contiguous()}, args.latents_out)
    print(json.dumps(report) if args.json_line else json.dumps(report, indent=2))
    return 0


def torch_device_name(device) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anyv2v", description="AnyV2V video editing on I2VGen-XL, SEINE or ConsistI2V (--backbone)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show library warnings and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="propagate an edited first frame through a video")
    edit.add_argument("--video", required=True, help="source video (mp4, mov, webm, avi, mkv, gif)")
    edit.add_argument("--edited-frame", required=True, help="the edited first frame (PNG/JPEG)")
    edit.add_argument("--prompt", required=True, help="caption of the edited video (not an instruction)")
    edit.add_argument(
        "--out",
        help="output .mp4, a .json of settings beside it (default: outputs/<video name>-edit-<8 hex>.mp4)",
    )
    edit.add_argument("--overwrite", action="store_true", help="replace an existing output (never done otherwise)")
    _add_config_flags(edit)
    edit.set_defaults(func=cmd_edit)

    inv = sub.add_parser("invert", help="invert a video ahead of time (fills the cache)")
    inv.add_argument("--video", required=True)
    _add_config_flags(inv, sampling=False)
    inv.add_argument("--steps", type=int, help="check the inversion serves this many sampling steps")
    inv.set_defaults(func=cmd_invert)

    convert = sub.add_parser(
        "convert-seine", help="convert the official SEINE checkpoint (seine.pt + SD-1.4) into a folder --backbone seine loads"
    )
    convert.add_argument("--checkpoint", required=True, help="seine.pt from the hub repo Vchitect/SEINE")
    convert.add_argument("--sd", required=True, help="Stable Diffusion 1.4 folder (CompVis/stable-diffusion-v1-4)")
    convert.add_argument("out_dir", help="new folder to write (must not exist, or be empty)")
    convert.set_defaults(func=cmd_convert_seine)

    convert_ci2v = sub.add_parser(
        "convert-consisti2v", help="convert a ConsistI2V folder whose weights are .bin pickles into safetensors"
    )
    convert_ci2v.add_argument("source", help="a folder in TIGER-Lab/ConsistI2V's layout")
    convert_ci2v.add_argument("out_dir", help="new folder to write (must not exist, or be empty)")
    convert_ci2v.set_defaults(func=cmd_convert_consisti2v)

    tiny = sub.add_parser("make-tiny-model", help="write a tiny random I2VGen-XL (diffusers layout) for tests/demos")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--overwrite", action="store_true")
    tiny.add_argument(
        "--real-size", action="store_true",
        help="random weights with the hub model's real configs (1.42 B UNet, fp16, about 4.7 GB) for real-size bench runs",
    )
    tiny.add_argument("--mid-size", action="store_true", help="a 63 M parameter UNet for CPU memory measurements")
    tiny.add_argument("--backbone", choices=NAMES, default=DEFAULT_BACKBONE, help="which video model (default i2vgen-xl)")
    tiny.set_defaults(func=cmd_make_tiny_model)

    bench = sub.add_parser("bench", help="run one edit and print UNet calls, FLOPs, seconds and peak memory as JSON")
    bench.add_argument("--video", required=True)
    bench.add_argument("--edited-frame", required=True)
    bench.add_argument("--prompt", default="a video")
    bench.add_argument("--frames-sweep", help="comma-separated frame counts (e.g. 16,32,64,128): one JSON line each")
    bench.add_argument("--json-line", action="store_true", help="print the report as one JSON line")
    bench.add_argument("--latents-out", help="also save the edited latents (safetensors) to compare runs")
    _add_config_flags(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "diffusers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as dlog
        from transformers.utils import logging as tlog

        dlog.set_verbosity_error()
        dlog.disable_progress_bar()
        tlog.set_verbosity_error()
        tlog.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.verbose:
        _quiet_libraries()
    try:
        return args.func(args)
    except AnyV2VError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"error: out of memory; {OOM_ADVICE}", file=sys.stderr)
        return 1
    except OSError as exc:  # the disk or the file system refused (full, read-only, permissions)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"error: the file system refused: {exc.strerror or exc}{where}; nothing was written.", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure: one line unless --verbose
        if args.verbose:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with --verbose for details)", file=sys.stderr)
        return 1
