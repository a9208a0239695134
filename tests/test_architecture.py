"""The package's shape: one stage per folder, imports pointing one way (lazy ones included), no
cycles; the recipe and benchmark registries agree with the configs and the CLI."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.config import RECIPE_CONFIGS, parse_config
from tunesmith.config.sections import Section
from tunesmith.errors import ConfigError
from tunesmith.recipes.base import RECIPES, get_recipe
from tunesmith.recipes.benchmarks import BENCHMARKS

SRC = Path(__file__).resolve().parents[1] / "src" / "tunesmith"
# the pipeline's direction: a module may import its own stage and the stages before it
LAYERS = [
    ("errors",),
    ("io",),
    ("ui", "runs", "config"),
    ("data",),
    ("modeling",),
    ("generation",),
    ("training", "evaluation", "preference", "chat", "reporting"),
    ("recipes",),
    ("cli",),
]
RANK = {stage: i for i, group in enumerate(LAYERS) for stage in group}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module → the project modules it imports anywhere (module level or inside functions)."""
    mods = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the submodule; `from mod import name` the module
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                names = subs if len(subs) == len(node.names) else [node.module, *subs]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def stage(module: str) -> str:
    return module.split(".")[1] if "." in module else "tunesmith"


def test_no_import_cycles_lazy_imports_included():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_imports_point_down_the_pipeline():
    graph = import_graph()
    unknown = sorted({stage(m) for m in graph} - set(RANK) - {"tunesmith"})
    assert unknown == [], f"folders without a place in LAYERS: {unknown}"
    upward = [
        f"{m} -> {n}"
        for m, ns in graph.items()
        for n in ns
        if stage(m) in RANK and stage(n) in RANK and RANK[stage(n)] > RANK[stage(m)]
    ]
    assert upward == []


def test_a_cycle_is_detected_by_the_walk(tmp_path, monkeypatch):
    # the graph builder sees imports inside functions: a lazy import of cli from data is an upward edge
    import tests.test_architecture as me

    fake = tmp_path / "tunesmith"
    (fake / "data").mkdir(parents=True)
    (fake / "cli").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "data" / "__init__.py").write_text("def f():\n    from tunesmith.cli import app\n")
    (fake / "cli" / "__init__.py").write_text("from tunesmith.data import f\napp = 1\n")
    monkeypatch.setattr(me, "SRC", fake)
    g = me.import_graph()
    assert "tunesmith.cli" in g["tunesmith.data"] and "tunesmith.data" in g["tunesmith.cli"]
    with pytest.raises(AssertionError):
        me.test_no_import_cycles_lazy_imports_included()


def test_every_recipe_is_registered_with_its_config():
    assert set(RECIPES) == set(RECIPE_CONFIGS)
    for name in RECIPES:
        r = get_recipe(name)
        assert r.name == name and r.config_class is RECIPE_CONFIGS[name] and r.summary
        minimal = {"recipe": name, **({"data": {"sft": {"train": "chats.jsonl"}}} if name == "sft" else {})}
        assert type(parse_config(minimal)) is RECIPE_CONFIGS[name]
        for method in ("validate", "train", "run"):
            assert callable(getattr(r, method))


def _has_key(cls: type[Section], dotted: str) -> bool:
    *parents, leaf = dotted.split(".")
    cur = cls
    for p in parents:
        cur = cur.model_fields[p].annotation
    return leaf in cur.model_fields


def test_every_benchmark_reads_a_real_recipe_config_key():
    assert set(BENCHMARKS) == {"gsm8k", "eqbench", "ailuminate", "heads"}
    for b in BENCHMARKS.values():
        assert b.recipe in RECIPES
        assert _has_key(RECIPE_CONFIGS[b.recipe], b.limit_key), b


def test_unknown_recipe_names_the_registry():
    with pytest.raises(ConfigError) as e:
        parse_config({"recipe": "sftt"}, "x.yaml")
    assert "x.yaml" in str(e.value) and all(r in str(e.value) for r in RECIPES)


def test_foreign_section_is_an_unknown_key_naming_its_recipe():
    with pytest.raises(ConfigError) as e:
        parse_config({"recipe": "gsm8k", "heads": {"emotion": False}}, "g.yaml")
    msg = str(e.value)
    assert msg.startswith("g.yaml: config key 'heads' belongs to the empathy recipe, not gsm8k") and "\n" not in msg
    with pytest.raises(ConfigError, match="'data.gsm8k' belongs to the gsm8k recipe, not empathy"):
        parse_config({"recipe": "empathy", "data": {"gsm8k": {"limit_test": 3}}})
    with pytest.raises(ConfigError, match="'eval' belongs to the gsm8k, empathy and sft recipes, not dpo"):
        parse_config({"recipe": "dpo", "eval": {"k_shot": 3}})


@pytest.mark.parametrize(
    "data,old,new",
    [
        ({"recipe": "empathy", "loss": {"lambda_safety_kl": 0.1}}, "loss.lambda_safety_kl", "loss.lambda_kl"),
        (
            {"recipe": "empathy", "data": {"empathy": {"safety_prompts": "x"}}},
            "data.empathy.safety_prompts",
            "data.empathy.kl_prompts",
        ),
        ({"recipe": "dpo", "dpo": {"learning_rate": 1e-4}}, "dpo.learning_rate", "training.learning_rate"),
        ({"recipe": "dpo", "dpo": {"max_length": 512}}, "dpo.max_length", "data.max_length"),
    ],
)
def test_renamed_keys_name_their_new_spelling(data, old, new):
    with pytest.raises(ConfigError, match=f"config key '{old}' was renamed to '{new}'"):
        parse_config(data)


def test_dpo_reuses_the_training_section_and_rejects_keys_it_would_not_read():
    cfg = parse_config({"recipe": "dpo", "training": {"learning_rate": 1e-4, "epochs": 2}})
    assert cfg.training.learning_rate == 1e-4 and cfg.training.scheduler == "cosine"  # DPO's defaults
    with pytest.raises(ConfigError, match="training.head_learning_rate is not used by the dpo recipe"):
        parse_config({"recipe": "dpo", "training": {"head_learning_rate": 1e-3}})


def _cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_cli_lists_recipes_and_benchmarks(tmp_path):
    r = _cli("recipes", cwd=tmp_path)
    assert r.returncode == 0
    assert [ln.split()[0] for ln in r.stdout.splitlines()] == list(RECIPES)
    b = _cli("eval", "--list", cwd=tmp_path)
    assert b.returncode == 0 and [ln.split()[0] for ln in b.stdout.splitlines()] == list(BENCHMARKS)


def test_vllm_backend_without_vllm_is_one_line_before_training(tmp_path):
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except Exception:
        pass
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "runs"
    r = _cli(
        "run",
        str(root / "configs" / "demo.yaml"),
        "--set",
        "eval.backend=vllm",
        "--set",
        f"output_dir={out}",
        "--set",
        f"summary_csv={tmp_path / 's.csv'}",
        "--set",
        "safety.enabled=false",
        cwd=root,
        # an empty cache, as on a fresh machine: the check must come before the embedded model is cached
        env={"TUNESMITH_CACHE": str(tmp_path / "cache")},
    )
    assert r.returncode == 2, r.stderr
    assert not (tmp_path / "cache").exists()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "vllm" in lines[0].lower()
    assert "Traceback" not in r.stderr and not out.exists()  # nothing trained, nothing written
