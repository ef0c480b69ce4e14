"""Command line: python -m diffusion_core {sample,animate,train,distill,evaluate,export-dataset,build-data,
describe-data,train-classifier,publish} (installed: diffusion-core ...).

Errors in what the user asked for (a ValueError) print one line and exit with status 2."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

DEFAULT_MODEL = "checkpoints/emoji32"
STATE_DIR_HELP = ("folder for the run's state, log and exports (relative out_dir/export_dir go under it; "
                  "default $DIFFUSION_STATE_DIR, else the current folder), e.g. one that outlives the checkout")


def print_word_notes(result) -> None:
    """What became of a prompt's words: those read as known ones (WordNet), those the model does not know."""
    if result.read_as:
        print("note: words the model never saw, read as words it knows (WordNet): "
              + ", ".join(f"{word} as {reading}" for word, reading in result.read_as.items()))
    if result.unknown_words:
        print(f"note: the model does not know the words {', '.join(result.unknown_words)} (they were ignored)")


def cmd_sample(args) -> None:
    import numpy as np

    from PIL import Image

    from .pipeline import DiffusionPipeline
    from .viz import prompt_grid, save_atomic, save_grid

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".npz"):
        raise ValueError(f"--out must end in .png or .npz, got {str(out)!r}")
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=args.dtype)
    classes = args.classes if args.classes else None
    interval = "default" if args.guidance_interval is None else None if args.guidance_interval == ["all"] else \
        tuple(map(float, args.guidance_interval))
    prompts = args.prompts or []
    if len(prompts) > args.num:
        raise ValueError(f"--num {args.num} is fewer than the {len(prompts)} prompts; each prompt needs an image")
    prompt = prompts if len(prompts) > 1 else prompts[0] if prompts else None
    init_image, strength, mask = edit_inputs(args, pipe, prompts)
    result = pipe.generate(num_images=args.num, classes=classes, style=args.style, prompt=prompt,
                           sampler=args.sampler, steps=args.steps, guidance=args.guidance, eta=args.eta, seed=args.seed,
                           guidance_interval=interval,
                           autoguidance="default" if args.autoguidance is None else None if args.autoguidance == 1 else args.autoguidance,
                           init_image=init_image, strength=strength, mask=mask)
    print_word_notes(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npz":
        tmp = out.with_name(f".{out.stem}.tmp.npz")
        text = {"prompts": np.array([prompts[i % len(prompts)] for i in range(len(result.images))])} if prompts else {}
        np.savez(tmp, images=result.images, labels=result.labels, **text)
        tmp.replace(out)
    elif len(prompts) > 1:
        save_atomic(Image.fromarray(prompt_grid(result.images, prompts)), out)
    else:
        save_grid(result.images, out, nrow=args.nrow)
    sampling = {k: v if v is not None else pipe.default_sampling[k]
                for k, v in (("sampler", args.sampler), ("steps", args.steps), ("guidance", args.guidance))}
    guided = f"autoguidance {result.autoguidance:g}" if result.autoguidance else f"guidance {sampling['guidance']:g}"
    edited = "" if init_image is None else f", strength {strength:g}" + (", masked" if mask is not None else "")
    print(f"wrote {len(result.images)} images to {out} in {result.seconds:.2f} s "
          f"({sampling['sampler']}, {sampling['steps']} steps, {guided}{edited}, {pipe.device}, {pipe.dtype})")


EDIT_STRENGTH = 0.6  # --init's default strength


def edit_inputs(args, pipe, prompts: list[str]):
    """--init / --start-from-name, --strength and --mask as ``generate``'s init_image, strength and mask.
    Pictures go through the one guarded picture reader (uploads.read_picture: pixel cap, transparency on
    white, resized to the model's size); a mask is white (or transparent) where the model may repaint."""
    import numpy as np

    from .uploads import read_picture

    size = pipe.model.image_size
    if args.init and args.start_from_name:
        raise ValueError("give --init or --start-from-name, not both")
    init_image, strength = None, 1.0 if args.strength is None else args.strength
    if args.start_from_name:
        from .data import load_emoji
        from .named_sprite import NAMED_STRENGTH, find_named_sprite

        if not prompts:
            raise ValueError("--start-from-name needs --prompt: the emoji it names is the picture it starts from")
        data = load_emoji(split="train", image_size=size)
        avoid = args.style if args.style in data.style_names else None  # a model's own styles may not be the data's
        found = []
        for text in prompts:
            sprite = find_named_sprite(data, text, avoid_style=avoid)
            if sprite is None:
                raise ValueError(f"no training emoji's name or keywords match the words of {text!r}"
                                 + (f" in a style other than {avoid}" if avoid else ""))
            print(f"starting from the emoji it names: {text!r} -> {sprite.name!r} ({sprite.style} sprite, "
                  f"row {sprite.index} of the training emoji, match {sprite.score:.2f})")
            found.append(sprite)
        init_image = np.stack([data.images[found[i % len(found)].index] for i in range(args.num)])
        strength = NAMED_STRENGTH if args.strength is None else args.strength
    elif args.init:
        init_image = read_picture(Path(args.init), size)
        strength = EDIT_STRENGTH if args.strength is None else args.strength
    elif args.strength is not None:
        raise ValueError("--strength needs a picture to start from: --init PICTURE or --start-from-name")
    mask = None
    if args.mask:
        if init_image is None:
            raise ValueError("--mask needs a picture to apply to: --init PICTURE (or --start-from-name)")
        mask = read_picture(Path(args.mask), size).mean(axis=-1) > 127.5
    return init_image, strength, mask


def cmd_animate(args) -> None:
    from .pipeline import DiffusionPipeline
    from .viz import save_gif, save_mp4, trajectory_frames

    out = Path(args.out)
    if out.suffix.lower() not in (".gif", ".mp4"):
        raise ValueError(f"--out must end in .gif or .mp4, got {str(out)!r}")
    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=args.dtype)
    result = pipe.generate(num_images=args.num, classes=args.classes or None, sampler=args.sampler, steps=args.steps,
                           guidance=args.guidance, seed=args.seed, return_trajectory=True)
    frames = trajectory_frames(result.trajectory.x_t, result.trajectory.x0_pred, final=result.images,
                               scale=args.scale, nrow=args.nrow)
    save_gif(frames, out) if out.suffix.lower() == ".gif" else save_mp4(frames, out)
    print(f"wrote {len(frames)} frames to {out} (left: x_t, right: predicted x_0)")


def config_from(args, config_class):
    """The JSON config file (or the defaults), with the command line's flags on top."""
    cfg = config_class.from_json(args.config) if args.config else config_class()
    names = {f.name for f in dataclasses.fields(config_class)}
    return dataclasses.replace(cfg, **{k: v for k, v in vars(args).items() if k in names and v is not None})


def cmd_train(args) -> None:
    from .train import TrainConfig, train, under_state_dir

    cfg = under_state_dir(config_from(args, TrainConfig), args.state_dir)
    summary = train(cfg, resume=args.resume, show_progress=not args.quiet, export_only=args.export_only)
    exit_if_stopped(summary)
    print(f"trained to step {summary['step']}; checkpoint exported to {cfg.export_dir}")
    ship_export(cfg.export_dir, args.ship)


def exit_if_stopped(summary: dict) -> None:
    """A run stopped by Ctrl-C or SIGTERM (its state saved) exits as a shell expects of that signal: 128 + its number."""
    if summary.get("stopped_by"):
        import signal

        raise SystemExit(128 + signal.Signals[summary["stopped_by"]].value)


def cmd_distill(args) -> None:
    from .distill import DistillConfig, distill
    from .train import under_state_dir

    cfg = under_state_dir(config_from(args, DistillConfig), args.state_dir)
    summary = distill(cfg, resume=args.resume, show_progress=not args.quiet, export_only=args.export_only)
    exit_if_stopped(summary)
    print(f"distilled to step {summary['step']}; student exported to {cfg.export_dir}")
    ship_export(cfg.export_dir, args.ship)


def ship_export(export_dir: str, dest: str | None) -> None:
    """--ship DEST: copy the run's export to where it ships (an explicit step: no config writes there).
    Under torchrun only the first process copies."""
    if dest and int(os.environ.get("RANK", "0")) == 0:
        from .publish import ship

        copied = ship(export_dir, dest)
        print(f"shipped {export_dir} to {dest} ({len(copied)} files)")


def cmd_publish(args) -> None:
    from .publish import prepare, upload_all

    uploads = prepare(args.model_repo, args.space, out=args.out, checkpoint=args.checkpoint,
                      fast_repo=args.fast_model_repo, fast_checkpoint=args.fast_checkpoint)
    verb = "would upload" if args.dry_run else "uploading"
    for up in uploads:
        print(f"{verb}: {up.describe()}")
    if args.dry_run:
        print(f"dry run: nothing uploaded; the folders are in {args.out}")
        return
    for url in upload_all(uploads, private=args.private):
        print(f"uploaded: {url}")


def cmd_build_data(args) -> None:
    from .data import EMOJI_NPZ
    from .emoji_build import build_emoji
    from .lexicon import READINGS_FILE, build_wordnet_readings

    if args.name == "wordnet":
        if args.check or args.every != 1:
            raise SystemExit("--check and --every are for the emoji build")
        result = build_wordnet_readings(args.out or READINGS_FILE)
        print(f"wrote {result['path']}: readings of {result['words']:,} words the emoji data lacks ({result['bytes']:,} bytes)")
        return

    if args.every != 1 and not args.check:
        raise SystemExit("--every draws a sample of the emoji: use it with --check (a sample must not replace the data)")
    if args.check:
        check_emoji_build(args.out or EMOJI_NPZ, args.every)
        return
    out = args.out or EMOJI_NPZ
    result = build_emoji(out)
    for style, report in result["icon_sets"].items():
        line = f"{style}: {report['drawn']} emoji drawn, {report['duplicates']} exact duplicates dropped"
        if report.get("skin_tone_icons"):
            line += f", {report['skin_tone_icons']} skin-tone icons dropped"
        if report.get("unknown_icons"):
            line += f", {report['unknown_icons']} icons not in emoji-test.txt 15.0 (e.g. {', '.join(report['unknown_examples'][:4])})"
        if report.get("failed"):
            line += f", {len(report['failed'])} failed to render: {'; '.join(report['failed'])}"
        print(line)
    print(f"wrote {out}: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))


def check_emoji_build(shipped_path, every: int) -> None:
    """Rebuild the emoji (every ``every``-th of them) into a temporary file and hold it against ``shipped_path``."""
    import tempfile

    import numpy as np

    from .emoji_build import build_emoji, compare_emoji_arrays

    with tempfile.TemporaryDirectory() as tmp:
        build_emoji(Path(tmp) / "rebuilt.npz", every=every)
        with np.load(Path(tmp) / "rebuilt.npz") as built, np.load(shipped_path) as shipped:
            differences = compare_emoji_arrays(dict(built), dict(shipped))
            compared = len(built["names"])
    if differences:
        print(f"{len(differences)} differences from {shipped_path}, e.g.:\n  " + "\n  ".join(differences[:20]))
        raise SystemExit(1)
    print(f"the rebuild matches {shipped_path}: {compared:,} sprites compared"
          + (f" (one emoji in {every})" if every > 1 else " (every array, bit for bit)"))


def cmd_describe_data(args) -> None:
    from .data import EMOJI_NPZ, count_table, load_emoji
    from .viz import class_style_grid, save_atomic
    from PIL import Image

    data = load_emoji(args.data or EMOJI_NPZ, split="all")
    grid = class_style_grid(data.images, data.labels, data.style_index(), data.class_names, data.style_names,
                            per_cell=args.per_cell)
    save_atomic(Image.fromarray(grid), args.grid)
    print(f"wrote {args.grid} (rows: {', '.join(data.class_names)})\n")
    print(count_table(args.data or EMOJI_NPZ))


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_command

    evaluate_command(args)


def cmd_export_dataset(args) -> None:
    from tqdm import tqdm

    from .export import export_dataset
    from .pipeline import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.model, dtype=args.dtype)
    with tqdm(unit="img", dynamic_ncols=True, disable=args.quiet) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        result = export_dataset(pipe, args.out, classes=args.classes, prompts=args.prompts, per_label=args.per_class,
                                style=args.style, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                                seed=args.seed, progress=progress)
    print_word_notes(result)
    print(f"wrote {result.num_images} images in {len(result.folders)} folders ({', '.join(result.folders)}) "
          f"to {result.path} in {result.seconds:.1f} s; train on it with --data folder:{result.path}")


def cmd_train_classifier(args) -> None:
    from .metrics import train_classifier

    train_classifier(out_path=args.out, epochs=args.epochs, patience=args.patience, seed=args.seed, width=args.width,
                     split_seed=args.split_seed)


def int_or_none(value: str):
    return None if value.lower() == "none" else int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffusion_core", description="Small diffusion models: sample, train, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="draw images and write a PNG grid or an .npz")
    s.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder or Hub repo id")
    s.add_argument("--num", type=int, default=16, help="number of images (1..64)")
    s.add_argument("--class", dest="classes", action="append", help="class name; repeat to cycle several")
    s.add_argument("--style", default=None, help="style name (emoji: noto, openmoji, twemoji, fluent, emojione)")
    s.add_argument("--prompt", dest="prompts", action="append",
                   help="text, e.g. 'red apple' (models trained with text); repeat to cycle several (a PNG then "
                        "shows each prompt above its pictures)")
    s.add_argument("--sampler", default=None, help="ddpm, ddim, dpmpp_2m, dpmpp_2m_sde or consistency (default: the checkpoint's)")
    s.add_argument("--steps", type=int, default=None, help="default: the checkpoint's default_sampling")
    s.add_argument("--guidance", type=float, default=None, help="default: the checkpoint's default_sampling")
    s.add_argument("--guidance-interval", nargs="+", default=None, metavar="SIGMA",
                   help="guide only at noise levels σ in (LO, HI] (two numbers), or 'all' (default: the checkpoint's)")
    s.add_argument("--autoguidance", type=float, default=None, metavar="W",
                   help="guide with the checkpoint's guide model at strength W instead of classifier-free guidance "
                        "(1 = off; default: the checkpoint's, for samples with no class, style or prompt)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0..1)")
    s.add_argument("--init", default=None, metavar="PICTURE",
                   help="redraw this picture (SDEdit): noised to --strength, then denoised (docs/editing.md)")
    s.add_argument("--strength", type=float, default=None,
                   help=f"how far the picture is noised, 0..1: 0 keeps it, 1 ignores it (default {EDIT_STRENGTH} "
                        "with --init, the measured one with --start-from-name)")
    s.add_argument("--mask", default=None, metavar="PICTURE",
                   help="with --init: repaint only where this picture is white (or transparent), keep the rest")
    s.add_argument("--start-from-name", action="store_true",
                   help="with --prompt: start from the training emoji the prompt names, in another style than "
                        "--style, and redraw it (prints which sprite)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--dtype", default="float32", help="float32, bfloat16 or auto")
    s.add_argument("--nrow", type=int, default=8)
    s.add_argument("--out", default="samples.png", help=".png grid or .npz arrays")
    s.set_defaults(func=cmd_sample)

    a = sub.add_parser("animate", help="write the denoising trajectory as a GIF or MP4")
    a.add_argument("--model", default=DEFAULT_MODEL)
    a.add_argument("--num", type=int, default=8)
    a.add_argument("--class", dest="classes", action="append")
    a.add_argument("--sampler", default="dpmpp_2m_sde", help="ddpm, ddim, dpmpp_2m or dpmpp_2m_sde")
    a.add_argument("--steps", type=int, default=30)
    a.add_argument("--guidance", type=float, default=3.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--dtype", default="float32")
    a.add_argument("--scale", type=int, default=4)
    a.add_argument("--nrow", type=int, default=4)
    a.add_argument("--out", default="denoising.gif")
    a.set_defaults(func=cmd_animate)

    t = sub.add_parser("train", help="train a model (flags override the config file)")
    t.add_argument("--config", help="JSON training config, e.g. configs/emoji32.json")
    t.add_argument("--resume", action="store_true", help="continue from out_dir/state.safetensors")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--state-dir", default=None, help=STATE_DIR_HELP)
    t.add_argument("--export-only", action="store_true",
                   help="write out_dir/state.safetensors's EMA weights to export_dir (card, samples) without training")
    t.add_argument("--ship", metavar="DIR", default=None,
                   help="then copy the export into DIR (e.g. checkpoints/emoji32); configs never write there themselves")
    for name, kind in (("data", str), ("max_steps", int), ("batch_size", int), ("lr", float), ("out_dir", str),
                       ("export_dir", str), ("checkpoint_every", int), ("state_every", int), ("log_every", int),
                       ("precision", str), ("num_threads", int), ("seed", int), ("base_channels", int), ("image_size", int),
                       ("prediction_type", str), ("schedule", str), ("warmup_steps", int), ("init_from", str),
                       ("min_lr_ratio", float), ("weights_dtype", str), ("text_lr_scale", float),
                       ("min_snr_gamma", float), ("context_dropout", float), ("grid_per_class", int),
                       ("curriculum_size", int), ("curriculum_steps", int), ("network", str)):
        t.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    t.set_defaults(func=cmd_train)

    di = sub.add_parser("distill", help="distil a teacher into a few-step student with guidance as an input "
                        "(flags override the config file)")
    di.add_argument("--config", help="JSON distillation config, e.g. configs/emoji32_guided.json")
    di.add_argument("--resume", action="store_true", help="continue from out_dir/state.safetensors")
    di.add_argument("--quiet", action="store_true", help="no progress bar")
    di.add_argument("--state-dir", default=None, help=STATE_DIR_HELP)
    di.add_argument("--export-only", action="store_true",
                    help="write out_dir/state.safetensors's EMA student to export_dir (card, samples) without training")
    di.add_argument("--ship", metavar="DIR", default=None,
                    help="then copy the export into DIR (e.g. checkpoints/emoji32_fast)")
    for name, kind in (("teacher", str), ("data", str), ("max_steps", int), ("batch_size", int), ("lr", float),
                       ("out_dir", str), ("export_dir", str), ("checkpoint_every", int), ("state_every", int),
                       ("log_every", int), ("precision", str), ("num_threads", int), ("seed", int),
                       ("skeleton_steps", int), ("warmup_steps", int), ("weights_dtype", str), ("loss_space", str),
                       ("init_student", str),
                       ("guidance_lr_scale", float), ("objective", str), ("segments", int),
                       ("regression_weight", float), ("critic_lr_scale", float)):
        di.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None)
    di.set_defaults(func=cmd_distill)

    e = sub.add_parser("evaluate", help="measure sample quality (FD, KID, precision, recall, class accuracy, copies) "
                       "beside real data's values")
    e.add_argument("--samples", default=None, metavar="F.npz",
                   help="score this sample file ('images' uint8 (N,32,32,3), 'labels' (N,) class or -1) and print JSON")
    e.add_argument("--styles", nargs="+", default=None,
                   help="compare with real images of these styles only (default: all, or the model's styles)")
    e.add_argument("--prompts", type=int, default=0, metavar="N",
                   help="text models: also prompt with N training and N held-out emoji names and score them")
    e.add_argument("--model", default=DEFAULT_MODEL)
    e.add_argument("--classifier", default=None, help="classifier .safetensors (default: the shipped one)")
    e.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto")
    e.add_argument("--quick", action="store_true", help="only the default sampler (DPM-Solver++ 2M SDE) at 20 steps, guidance 3 and 4")
    e.add_argument("--setting", action="append", metavar="SAMPLER:STEPS:GUIDANCE",
                   help="evaluate only this setting (repeatable), e.g. dpmpp_2m_sde:25:4, dpmpp_2m_sde:20:5:0.5:30 "
                        "(guidance for σ in (0.5, 30] only) or dpmpp_2m_sde:20:ag2 (autoguidance w 2 by the checkpoint's guide)")
    e.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="noise seeds: each setting is sampled once per seed, rows show the mean")
    e.add_argument("--no-write", action="store_true", help="print the tables only; leave the model card alone")
    e.add_argument("--prompts-only", action="store_true",
                   help="with --prompts N: only the prompt check (2N samples, printed; the card is left alone)")
    e.add_argument("--literal-prompts", action="store_true",
                   help="with --prompts: leave unknown words unknown (no WordNet readings, diffusion_core/lexicon.py)")
    e.set_defaults(func=cmd_evaluate)

    x = sub.add_parser("export-dataset", help="draw a labelled data set: a zip of class folders, labels.csv, model card")
    x.add_argument("--model", default=DEFAULT_MODEL)
    x.add_argument("--class", dest="classes", action="append", help="a class to draw; repeat (default: every class)")
    x.add_argument("--prompt", dest="prompts", action="append", help="a text to draw (text models); repeat")
    x.add_argument("--per-class", type=int, default=100, help="images per class or prompt")
    x.add_argument("--style", default=None)
    x.add_argument("--sampler", default=None, help="default: the checkpoint's default_sampling")
    x.add_argument("--steps", type=int, default=None)
    x.add_argument("--guidance", type=float, default=None)
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto")
    x.add_argument("--quiet", action="store_true", help="no progress bar")
    x.add_argument("--out", default="emoji_dataset.zip")
    x.set_defaults(func=cmd_export_dataset)

    b = sub.add_parser("build-data", help="render a data set from pinned packages")
    b.add_argument("name", choices=["emoji", "wordnet"],
                   help="emoji: assets/emoji_sprites.npz; wordnet: the readings of unknown prompt words (lexicon.py)")
    b.add_argument("--out", default=None, help="where to write (with --check: the file to check; default: the shipped one)")
    b.add_argument("--check", action="store_true", help="emoji: rebuild into a temporary file and compare with the "
                   "shipped arrays, writing nothing; exit 1 on a difference")
    b.add_argument("--every", type=int, default=1, help="with --check: draw only every N-th emoji (a quick sample)")
    b.set_defaults(func=cmd_build_data)

    d = sub.add_parser("describe-data", help="a grid of real sprites per style and class, and a table of counts")
    d.add_argument("--data", default=None, help="emoji .npz (default: the shipped one)")
    d.add_argument("--grid", default="assets/real_emoji_grid.png")
    d.add_argument("--per-cell", type=int, default=4, help="sprites per class and style")
    d.set_defaults(func=cmd_describe_data)

    c = sub.add_parser("train-classifier", help="train the evaluation classifier on the emoji sprites")
    c.add_argument("--out", default=None)
    c.add_argument("--epochs", type=int, default=30, help="at most this many epochs")
    c.add_argument("--patience", type=int, default=6, help="stop after this many epochs without a better held-out accuracy")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--width", type=int, default=48, help="channels of the first conv stage (then 2x, 4x)")
    c.add_argument("--split-seed", type=int, default=1,
                   help="which 30%% of the training emoji are its reference, never trained on (1: the shipped "
                        "classifier's; evaluate compares with the reference of the classifier it is given)")
    c.set_defaults(func=cmd_train_classifier)

    pb = sub.add_parser("publish", help="write a model repo and a Gradio Space as folders, then upload them to the Hub")
    pb.add_argument("--model-repo", required=True, metavar="USER/NAME", help="the model repo (weights, guide, card)")
    pb.add_argument("--space", required=True, metavar="USER/NAME", help="the Space (the app, reading the model repo)")
    pb.add_argument("--out", default="release", help="where the folders are written: OUT/model, OUT/space")
    pb.add_argument("--checkpoint", default=DEFAULT_MODEL, help="the checkpoint folder to publish")
    pb.add_argument("--fast-model-repo", default=None, metavar="USER/NAME",
                    help="also publish the fast model (live redraws) here; the Space then reads it")
    pb.add_argument("--fast-checkpoint", default=None, help="default: checkpoints/emoji32_fast")
    pb.add_argument("--private", action="store_true", help="create the repos private")
    pb.add_argument("--dry-run", action="store_true", help="write the folders and print what would be uploaded")
    pb.set_defaults(func=cmd_publish)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
