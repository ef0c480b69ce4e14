"""The release (issue 34): a short README whose links resolve, a package that installs and runs outside
the checkout, recipes that never write into checkpoints/, and a Space built in one command that serves
offline from the model folder it was published with."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_core.data import EMOJI_CLASSES as CLASS_NAMES, EMOJI_STYLES as STYLE_NAMES
from diffusion_core.distill import DistillConfig
from diffusion_core.pipeline import DiffusionPipeline
from diffusion_core.publish import prepare, ship
from diffusion_core.schedule import NoiseSchedule
from diffusion_core.train import TrainConfig
from diffusion_core.unet import UNet

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_MODEL_ID", "HF_FAST_MODEL_ID")}


def relative_links(markdown: Path) -> list[str]:
    """The link targets of a Markdown file that point into the project (no URLs, no bare #anchors)."""
    text = re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S)  # code blocks hold no links
    targets = LINK.findall(text) + re.findall(r"<img[^>]+src=\"([^\"]+)\"", text)
    return [t for t in targets if not re.match(r"^(https?:|mailto:|#)", t)]


def anchors(markdown: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown.read_text(), flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_short_and_every_relative_link_in_readme_and_docs_resolves():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 250
    pages = {p.stem for p in DOCS} - {"README"}
    assert {"app", "reference", "data", "models", "evaluation", "guidance", "text-prompts", "distillation",
            "training", "performance", "history"} <= pages
    broken = []
    for page in [readme, *DOCS, ROOT / "benchmarks" / "results" / "README.md", ROOT / "configs" / "README.md"]:
        for target in relative_links(page):
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve()
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links that resolve to nothing:\n" + "\n".join(broken)
    linked = {Path(t).stem for t in relative_links(readme) if t.startswith("docs/")}
    assert pages <= linked, f"docs pages the README's table does not link: {sorted(pages - linked)}"


def test_the_link_check_catches_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A Space, in one command\n![pic](missing.png) [ok](https://example.org) [anchor](#x)\n"
                    "```\n[not](a-link.md)\n```\n")
    assert relative_links(page) == ["missing.png"]
    assert anchors(page) == {"a-space-in-one-command"}


def test_no_recipe_and_no_default_writes_into_checkpoints():
    configs = sorted((ROOT / "configs").rglob("*.json"))
    assert len(configs) > 10 and any(p.parent.name == "experiments" for p in configs)
    writers = [p.name for p in configs if any(str(json.loads(p.read_text()).get(key, "")).startswith("checkpoints")
                                              for key in ("out_dir", "export_dir"))]
    assert writers == []
    for config in (TrainConfig(), DistillConfig()):
        assert not config.export_dir.startswith("checkpoints") and not config.out_dir.startswith("checkpoints")


def test_every_config_a_card_or_another_config_names_exists():
    """Moving configs must not break the commands in the shipped cards or the chains between recipes."""
    named = set()
    for card in (ROOT / "checkpoints").rglob("README.md"):
        named |= set(re.findall(r"--config (configs/\S+\.json)", card.read_text()))
    assert named and all((ROOT / c).is_file() for c in named), sorted(c for c in named if not (ROOT / c).is_file())
    shipped = {p.stem for p in (ROOT / "configs").glob("*.json")}
    for p in (ROOT / "configs").glob("*.json"):  # a shipped recipe starts from nothing or from another shipped one
        start = json.loads(p.read_text()).get("init_from") or json.loads(p.read_text()).get("init_student") or ""
        assert not start or Path(start).parts[1] in shipped, f"{p.name} starts from {start}"


def tiny_emoji_checkpoint(folder: Path) -> Path:
    """An 8-channel U-Net with the emoji classes and styles, saved as a checkpoint (seconds to sample)."""
    torch.manual_seed(0)
    model = UNet(image_size=32, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                 context_dim=len(CLASS_NAMES) + len(STYLE_NAMES), num_heads=2, num_groups=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pipe = DiffusionPipeline(model, NoiseSchedule("cosine", 100), list(CLASS_NAMES), list(STYLE_NAMES), device="cpu",
                             default_sampling={"sampler": "ddim", "steps": 2, "guidance": 2.0})
    return pipe.save_pretrained(folder, model_card="# tiny release-test model\n")


def test_ship_copies_an_export_keeps_a_guide_and_drops_stale_files(tmp_path):
    export = tiny_emoji_checkpoint(tmp_path / "export")
    dest = tmp_path / "checkpoints" / "mine"
    (dest / "guide").mkdir(parents=True)
    (dest / "guide" / "config.json").write_text("{}")
    (dest / "vocab.json").write_text("[]")  # an older text model's vocabulary: wrong for these weights
    copied = ship(export, dest)
    assert "model.safetensors" in copied and (dest / "guide" / "config.json").is_file()
    assert not (dest / "vocab.json").exists()
    assert (dest / "model.safetensors").read_bytes() == (export / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="not a checkpoint"):
        ship(tmp_path / "checkpoints", tmp_path / "elsewhere")


def test_pyproject_reads_the_runtime_requirements_and_keeps_the_app_as_an_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    requirements = [r for r in requirements if r]
    app = [r for r in requirements if re.match(r"^(gradio|av)\b", r)]
    assert project["dependencies"] == [r for r in requirements if r not in app]
    assert project["optional-dependencies"]["app"] == app
    assert {"app", "data", "test"} <= set(project["optional-dependencies"])
    assert project["scripts"]["diffusion-core"] == "diffusion_core.__main__:main"


def test_the_wheel_imports_outside_the_checkout_and_its_command_runs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "diffusion_core", src / "diffusion_core", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(src)],
                   check=True, env=CLEAN_ENV, cwd=tmp_path)
    wheel = next((tmp_path / "wheel").glob("diffusion_core-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, env=CLEAN_ENV, cwd=tmp_path)
    env = {**CLEAN_ENV, "PYTHONPATH": str(tmp_path / "site")}
    where = subprocess.run([sys.executable, "-c", "import diffusion_core, sys; print(diffusion_core.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(tmp_path / "site")
    command = tmp_path / "site" / "bin" / "diffusion-core"
    helped = subprocess.run([str(command), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert helped.returncode == 0 and "publish" in helped.stdout and "train" in helped.stdout
    model = tiny_emoji_checkpoint(tmp_path / "model")
    drawn = subprocess.run([str(command), "sample", "--model", str(model), "--num", "2", "--class", "face",
                            "--steps", "2", "--out", "two.npz"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert drawn.returncode == 0, drawn.stderr
    assert np.load(tmp_path / "two.npz")["images"].shape == (2, 32, 32, 3)


def readme_block(heading: str) -> list[str]:
    """The shell commands in the README's code blocks under ``heading`` (continued lines joined)."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines += [ln.split("  #")[0].strip() for ln in block.replace("\\\n", " ").splitlines() if ln.strip()]
    return lines


def test_the_readmes_training_commands_run_from_a_clean_state(tmp_path, monkeypatch):
    """Each train command of "Train your own", as written, in a folder with nothing but the configs (as in
    a fresh clone: no runs/) and, where a command names one, a folder of the user's pictures; a few steps
    of a narrower network. Nothing lands in checkpoints/ but what --ship copies there. (The command line's
    ``main`` runs in this process: `python -m diffusion_core` itself is run by the wheel's test.)"""
    from diffusion_core.__main__ import main
    commands = [c for c in readme_block("Train your own") if " train " in f" {c} " or " distill " in f" {c} "]
    assert len(commands) >= 3 and any("--resume" in c for c in commands)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFUSION_STATE_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads, shipped = torch.get_num_threads(), set()
    for command in commands:
        args = command.split()
        assert args[:3] == ["python", "-m", "diffusion_core"], command
        flags = dict(zip(args[3:], args[4:]))
        if flags.get("--data", "").startswith("folder:"):  # the user's pictures: two classes of three
            rng = np.random.default_rng(0)
            for label in ("cats", "dogs"):
                (tmp_path / flags["--data"][7:] / label).mkdir(parents=True)
                for i in range(3):
                    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                        tmp_path / flags["--data"][7:] / label / f"{i}.png")
        steps = "3" if "--resume" in args else "2"
        extra = ["--max-steps", steps, "--batch-size", "4", "--base-channels", "16", "--image-size", "16",
                 "--checkpoint-every", "100",
                 *(["--grid-per-class", "1"] if args[3] == "train" else []), "--log-every", "1", "--warmup-steps", "1", "--num-threads", "1", "--precision", "fp32", "--quiet"]
        try:
            assert main(args[3:] + extra) in (0, None), command
        finally:
            torch.set_num_threads(threads)
        export = flags.get("--export-dir") or json.loads((tmp_path / flags["--config"]).read_text())["export_dir"]
        assert (tmp_path / export / "model.safetensors").is_file(), command
        if "--ship" in flags:
            shipped.add(Path(flags["--ship"]).name)
            assert (tmp_path / flags["--ship"] / "model.safetensors").is_file()
    checkpoints = tmp_path / "checkpoints"
    assert (set(os.listdir(checkpoints)) if checkpoints.exists() else set()) == shipped


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_publish_dry_run_builds_a_model_repo_and_a_space_that_serves_offline_from_it(tmp_path):
    import gradio
    import httpx
    from gradio_client import Client
    from huggingface_hub import SpaceCard

    model = tiny_emoji_checkpoint(tmp_path / "ckpt")
    (model / "guide").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(model / name, model / "guide" / name)
    out = tmp_path / "release"
    done = subprocess.run([sys.executable, "-m", "diffusion_core", "publish", "--model-repo", "someone/tiny",
                           "--space", "someone/tiny-space", "--checkpoint", str(model), "--out", str(out), "--dry-run"],
                          cwd=ROOT, env={**CLEAN_ENV, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "would upload: model repo someone/tiny" in done.stdout and "Space someone/tiny-space" in done.stdout
    assert "HF_MODEL_ID=someone/tiny" in done.stdout and "nothing uploaded" in done.stdout
    assert (out / "model" / "guide" / "model.safetensors").is_file()
    assert "license: cc-by-sa-4.0" in (out / "model" / "README.md").read_text()
    space = out / "space"
    for name in ("app.py", "requirements.txt", "ui/__init__.py", "diffusion_core/pipeline.py", "assets/emoji_sprites.npz"):
        assert (space / name).is_file(), name
    card = SpaceCard((space / "README.md").read_text()).data
    assert (card.sdk, card.sdk_version, card.app_file, card.license) == ("gradio", gradio.__version__, "app.py",
                                                                         "cc-by-sa-4.0")
    assert card.title and card.emoji and card.colorFrom and card.colorTo and card.models == ["someone/tiny"]

    port = free_port()
    env = {**CLEAN_ENV, "HF_MODEL_ID": str(out / "model"), "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "space.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=space, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "space.log").read_text()[-3000:]
            assert time.time() < deadline, "the Space did not serve within 180 s"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        config = httpx.get(url + "config", timeout=10).text
        assert str(out / "model") in config and "Could not load" not in config
        gallery, info = Client(url, verbose=False).predict("ddim", 2, 2, 5, api_name="/generate")
        assert len(gallery) == 2 and "2 images, ddim, 2 steps" in info
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_publish_refuses_a_repo_id_that_is_not_user_slash_name(tmp_path):
    with pytest.raises(ValueError, match="--space must be a Hub repo id"):
        prepare("someone/model", "no-slash", out=tmp_path)


def test_publish_uploads_each_folder_to_its_repo_and_sets_the_spaces_model_variable(tmp_path, monkeypatch):
    """Without --dry-run: create_repo (a gradio Space for the app), the HF_MODEL_ID variable, one upload_folder
    each. The Hub cannot be reached here, so HfApi is replaced by a recorder of its calls."""
    import huggingface_hub

    from diffusion_core.publish import upload_all

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def add_space_variable(self, repo_id, key, value):
            calls.append(("variable", repo_id, key, value))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs["repo_type"], Path(kwargs["folder_path"]).name))

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    uploads = prepare("someone/tiny", "someone/tiny-space", out=tmp_path,
                      checkpoint=tiny_emoji_checkpoint(tmp_path / "ckpt"))
    urls = upload_all(uploads, token="t")
    assert urls == ["https://huggingface.co/someone/tiny", "https://huggingface.co/someone/tiny-space"]
    assert ("create_repo", "someone/tiny", {"repo_type": "model", "private": False, "exist_ok": True}) in calls
    assert ("create_repo", "someone/tiny-space", {"repo_type": "space", "private": False, "exist_ok": True,
                                                  "space_sdk": "gradio"}) in calls
    assert ("variable", "someone/tiny-space", "HF_MODEL_ID", "someone/tiny") in calls
    assert [c[1:] for c in calls if c[0] == "upload_folder"] == [("someone/tiny", "model", "model"),
                                                                  ("someone/tiny-space", "space", "space")]
