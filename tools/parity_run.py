"""Run our engine on a parity case of ../shared/tools/parity and write the keys the official code's run writes.

    python tools/parity_run.py --backbone seine --model CONVERTED --frames-dir CASE/frames \
        --edited-frame CASE/edited.png --prompt "darth vader walking" --out ours.safetensors \
        [--inversion-steps 40 --save-steps 20 --steps 10 --tau-conv 0.2 --tau-sa 0.2 --tau-ta 0.5 --guidance 4
         --seed 1 --negative-prompt "" --start-index 0 --noise-from REF.safetensors]
    python ../shared/tools/parity/compare.py REF.safetensors ours.safetensors --allow-missing

It converts nothing (give a folder our loader reads: for SEINE the output of `python -m anyv2v convert-seine`),
reads the case's PNG frames as they are (no resampling: the edited frame must have the frames' size), and runs
the engine's own inversion (`anyv2v.inversion.invert`, keeping the latents the edit reads) and sampling
(`anyv2v.sampler.sample`), fp32 on the CPU. Written, with the reference's names, shapes and layout:
  inverted.<t>                     the inverted latents the edit reads (SEINE: t+1 of each step and x_T)
  edited_latents                   [1, 4, F, h, w]
  frames                           SEINE: uint8 [1, F, H, W, 3]; I2VGen-XL: float [1, F, 3, H, W] in [0, 1]
  edit_timesteps                   int64, the sampling timesteps
  injection_timesteps.{conv,spatial_attn,temporal_attn}   int64, the timesteps at which the engine's probe saw
                                   the edit branches' features taken from the source branch (observed, not planned)
With --noise-from, SEINE's DDPM steps take the reference run's `ddpm_noise.<t>` tensors (the official code draws
them from the global RNG); otherwise a generator seeded with --seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from anyv2v.backbone import load_backbone  # noqa: E402
from anyv2v.backbones import NAMES  # noqa: E402
from anyv2v.config import EditConfig  # noqa: E402
from anyv2v.errors import AnyV2VError  # noqa: E402
from anyv2v.injection import InjectionSchedule  # noqa: E402
from anyv2v.inversion import invert  # noqa: E402
from anyv2v.sampler import SamplingSettings, sample  # noqa: E402

KINDS = {"conv": "conv", "spatial": "spatial_attn", "temporal": "temporal_attn"}
# How each harness names the injection kinds in its metadata, whether it records the planned schedule, and its
# `frames`: uint8 [1, F, H, W, 3] pixels, float [1, F, 3, H, W] in [0, 1] ("unit") or [1, 3, F, H, W] ("unit_cf").
# ConsistI2V's harness saves as injection_timesteps.* the schedules registered before the start index cuts them.
METADATA = {
    "seine": {"events": KINDS, "scheduled": True, "frames": "uint8"},
    "i2vgen-xl": {"events": {"conv": "Conv", "spatial": "Spa-Attn", "temporal": "Tmp-Attn"}, "scheduled": False, "frames": "unit"},
    "consisti2v": {
        "events": {"conv": "Conv", "spatial": "Spa-Attn", "temporal": "Tmp-Attn"}, "scheduled": False,
        "frames": "unit_cf", "planned_timesteps": True,
    },
}


def frames_as_reference(backbone, latents: torch.Tensor) -> torch.Tensor:
    """The `frames` tensor in the layout of this backbone's reference output."""
    if METADATA[backbone.name]["frames"] == "uint8":  # the saved pixels, as the backbone decodes them
        import numpy as np

        return torch.from_numpy(np.stack([np.asarray(f) for f in backbone.decode(latents, chunk=latents.shape[2])]))[None]
    # I2VGen-XL's reference asks its pipeline for output_type="pt": the VAE decode mapped to [0, 1].
    with torch.no_grad():
        scaled = latents[0].permute(1, 0, 2, 3) / backbone.vae.config.scaling_factor
        video = backbone.vae.decode(scaled.to(backbone.device, backbone.vae.dtype)).sample.float().cpu()
    video = (video / 2 + 0.5).clamp(0, 1)[None]
    # ConsistI2V's reference keeps its pipeline's [1, 3, F, H, W] (channels before frames).
    return video.permute(0, 2, 1, 3, 4).contiguous() if METADATA[backbone.name]["frames"] == "unit_cf" else video


def read_frames(folder: str) -> list[Image.Image]:
    paths = sorted(Path(folder).glob("[0-9][0-9][0-9][0-9][0-9].png"))
    if not paths:
        raise AnyV2VError(f"{folder} has no frames named 00000.png, 00001.png, ...; give the case's frames/ folder.")
    return [Image.open(p).convert("RGB") for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", choices=NAMES, required=True)
    ap.add_argument("--model", required=True, help="a folder our loader reads (SEINE: from convert-seine)")
    ap.add_argument("--frames-dir", required=True)
    ap.add_argument("--edited-frame", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--inversion-steps", type=int)
    ap.add_argument("--save-steps", type=int, help="SEINE: the kept DDIM grid (default inversion steps // 2)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--tau-conv", type=float)
    ap.add_argument("--tau-sa", type=float)
    ap.add_argument("--tau-ta", type=float)
    ap.add_argument("--guidance", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--negative-prompt")
    ap.add_argument("--start-index", type=int, help="default: the harness's (ConsistI2V 1, others 0)")
    ap.add_argument("--source-branch-frame", choices=("source", "edited"), help="default: the backbone's")
    ap.add_argument("--frame-init", action="store_true", help="ConsistI2V: FrameInit on the start latent")
    ap.add_argument("--frame-init-noise-level", type=int, help="default 850")
    ap.add_argument("--fps", type=int, default=8)
    ap.add_argument("--noise-from", help="a reference run's safetensors: its ddpm_noise.<t> tensors")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        return run(args)
    except AnyV2VError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# The reference harnesses' defaults (tiny runs), per backbone.
HARNESS_DEFAULTS = {
    "seine": dict(inversion_steps=40, steps=10, guidance=4.0, seed=1, negative_prompt=""),
    "i2vgen-xl": dict(inversion_steps=20, steps=10, guidance=9.0, seed=8888),
    "consisti2v": dict(inversion_steps=20, steps=10, guidance=35.0, seed=8888, start_index=1),
}


def run(args) -> int:
    frames = read_frames(args.frames_dir)
    edited = Image.open(args.edited_frame).convert("RGB")
    if edited.size != frames[0].size:
        raise AnyV2VError(f"the edited frame is {edited.size}, the frames {frames[0].size}: this runner resamples nothing.")
    width, height = frames[0].size
    changes = {
        name: value
        for name, value in dict(
            inversion_steps=args.inversion_steps, steps=args.steps, guidance=args.guidance, seed=args.seed,
            negative_prompt=args.negative_prompt, tau_conv=args.tau_conv, tau_sa=args.tau_sa, tau_ta=args.tau_ta,
            start_index=args.start_index, source_branch_frame=args.source_branch_frame,
            frame_init=args.frame_init or None, frame_init_noise_level=args.frame_init_noise_level,
        ).items()
        if value is not None
    }
    config = EditConfig.for_backbone(
        args.backbone, model=args.model, width=width, height=height, frames=len(frames), fps=args.fps,
        inversion_save_steps=args.save_steps, cache_max_gb=0.0,
        **{"start_index": 0, **HARNESS_DEFAULTS[args.backbone], **changes},
    ).validate()
    backbone = load_backbone(config.model, "cpu", "float32", backbone=config.backbone)
    plan = backbone.plan
    plan.check(config.steps, config.inversion_steps, config.inversion_save_steps)
    keep = plan.needed(config.steps, config.inversion_steps, config.inversion_save_steps)
    inversion = invert(backbone, frames, config.inversion_steps, config.fps, config.seed, "parity", keep=keep)

    noise = None
    if args.noise_from:
        noise = {int(k.split(".")[1]): v for k, v in load_file(args.noise_from).items() if k.startswith("ddpm_noise.")}
    observed: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))  # kind -> t -> sites
    timesteps = plan.sampling_timesteps(config.steps)

    def probe(site, state, query, key):
        # Observed injection: the edit branches' feature (conv) or Q and K equal the source branch's.
        if not state.has_source or state.branches < 2:
            return
        t = timesteps[state.step_index]
        tensors = [query] if key is None else [query, key]
        if all(torch.equal(c, x.chunk(state.branches)[0]) for x in tensors for c in x.chunk(state.branches)[1:]):
            observed[site.kind][t].add(site.name)

    settings = SamplingSettings.from_config(config, args.prompt)
    latents = sample(backbone, inversion, frames[0], edited, settings, probe=probe, noise=noise)
    out = {
        "edited_latents": latents,
        "frames": frames_as_reference(backbone, latents),
        "edit_timesteps": torch.tensor(timesteps[config.start_index :], dtype=torch.int64),
    }
    schedule = InjectionSchedule.from_taus(config.steps, config.tau_conv, config.tau_sa, config.tau_ta)
    planned = METADATA[backbone.name].get("planned_timesteps", False)
    for kind, name in KINDS.items():
        steps_of_kind = timesteps[: getattr(schedule, kind)] if planned else sorted(observed[kind], reverse=True)
        out[f"injection_timesteps.{name}"] = torch.tensor(steps_of_kind, dtype=torch.int64)
    # As the reference harness's metadata: {kind: {t: sites}} observed, and as the schedule plans it.
    sites = Counter(site.kind for site in backbone.injection_sites())
    names = METADATA[backbone.name]["events"]
    events = {names[k]: {str(t): len(v) for t, v in sorted(observed[k].items(), reverse=True)} for k in KINDS if observed[k]}
    scheduled = {
        KINDS[k]: {str(timesteps[i]): sites[k] for i in range(config.start_index, config.steps) if schedule.at(i).enabled(k)}
        for k in KINDS
    }
    scheduled = {k: v for k, v in scheduled.items() if v}
    for t in inversion.timesteps:
        out[f"inverted.{t}"] = inversion.at(t)
    out = {k: v.detach().cpu().contiguous() for k, v in out.items()}
    metadata = {
        "config": json.dumps({k: v for k, v in config.to_dict().items() if k not in ("cache_dir",)}),
        "injection_events": json.dumps(events),
    }
    if METADATA[backbone.name]["scheduled"]:
        metadata["injection_scheduled"] = json.dumps(scheduled)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_file(out, args.out, metadata=metadata)
    print(f"wrote {args.out}: {len(out)} tensors ({len(inversion.timesteps)} inverted latents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
