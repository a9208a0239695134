"""CLI commands of the preference-tuning feature: `tunesmith pairs | dpo | export`."""

from __future__ import annotations

import os
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.errors import ConfigError
from tunesmith.runs import run_system_prompt
from tunesmith.ui import quiet_libraries


class JudgeKind(str, Enum):
    heads = "heads"
    endpoint = "endpoint"
    file = "file"


class BackendKind(str, Enum):
    hf = "hf"
    vllm = "vllm"


def _device_of(model, heads):
    import torch

    if torch.cuda.is_available() and not getattr(model, "is_loaded_in_4bit", False):
        model.to("cuda")
        if heads is not None:
            heads.to("cuda")
    return model, heads


def pairs(
    out: Annotated[Path, typer.Argument(help="pairs JSONL to write (prompt/chosen/rejected); candidates go beside it")],
    adapter: Annotated[
        Path | None,
        typer.Option(
            "--adapter",
            help="SFT adapter folder (runs/<run>/adapter): 'sft' candidates and, for the heads judge, the heads",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="base model (default: the one the adapter was trained from)")
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            "--prompts",
            help="JSONL with 'prompt' (string or messages) and optional 'id'; default: the set shipped with tunesmith",
        ),
    ] = None,
    judge: Annotated[JudgeKind, typer.Option("--judge", help="heads | endpoint | file")] = JudgeKind.heads,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="file judge: JSONL {id, chosen, rejected} naming candidates by source or index"),
    ] = None,
    candidates: Annotated[
        Path | None,
        typer.Option("--candidates", help="reuse a candidates file from an earlier run instead of generating"),
    ] = None,
    judge_url: Annotated[
        str | None,
        typer.Option("--judge-url", help="endpoint judge: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000"),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option("--judge-model", help="endpoint judge: model name sent to the endpoint")
    ] = None,
    judge_key_env: Annotated[
        str,
        typer.Option(
            "--judge-key-env",
            help="environment variable holding the endpoint's API key (sent as a Bearer token when set)",
        ),
    ] = "OPENAI_API_KEY",
    samples: Annotated[int, typer.Option(help="extra sampled SFT candidates per prompt")] = 1,
    temperature: Annotated[float, typer.Option(help="temperature of the sampled candidates")] = 0.8,
    max_new_tokens: Annotated[int, typer.Option(help="reply length cap")] = 160,
    batch_size: int = 16,
    limit: Annotated[int | None, typer.Option(help="first N prompts only")] = None,
    min_gap: Annotated[
        float, typer.Option(help="skip prompts whose best and worst scores differ by no more than this")
    ] = 0.0,
    backend: Annotated[
        BackendKind,
        typer.Option("--backend", help="generation backend: hf | vllm (CUDA, serves the adapter as a LoRA)"),
    ] = BackendKind.hf,
    dtype: Annotated[str, typer.Option(help="auto | bf16 | fp16 | fp32")] = "auto",
    system: Annotated[
        str | None, typer.Option("--system", help="system prompt (default: the adapter's run config)")
    ] = None,
    seed: int = 0,
):
    """Candidate replies from the base and SFT models → judged → chosen/rejected pairs for DPO."""
    quiet_libraries()
    from tunesmith.io import write_jsonl
    from tunesmith.preference import candidates as cands_io
    from tunesmith.preference import judges
    from tunesmith.preference import pairs as pair_sets
    from tunesmith.ui import say

    if judge is JudgeKind.endpoint and not (judge_url and judge_model):
        raise ConfigError("--judge endpoint needs --judge-url and --judge-model")
    if judge is JudgeKind.file and labels is None:
        raise ConfigError("--judge file needs --labels (JSONL {id, chosen, rejected})")
    if candidates is None and adapter is None and model is None:
        raise ConfigError("give --adapter (the SFT adapter) and/or --model")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {adapter}: not an adapter folder (no adapter_config.json)")
    file_judge = judges.FileJudge(labels) if judge is JudgeKind.file else None
    system_prompt = system if system is not None else run_system_prompt(adapter)

    cand_path = out.with_name(out.name.removesuffix(".jsonl") + ".candidates.jsonl")
    hf = None  # (model, tokenizer, heads) when the HF model is needed

    def hf_model():
        nonlocal hf
        if hf is None:
            from tunesmith.modeling.loading import load_for_inference

            m, tok, heads = load_for_inference(adapter, model, dtype)
            m, heads = _device_of(m, heads)
            hf = (m, tok, heads)
        return hf

    if candidates is not None:
        items, cands = cands_io.load_candidates(candidates)
        items = items[:limit] if limit else items
        cands = cands[: len(items)]
    else:
        items = cands_io.load_prompt_items(prompts, limit)
        from tunesmith.generation.factory import make_generator

        if backend is BackendKind.vllm:
            from tunesmith.modeling.loading import base_model_ref, load_tokenizer, run_chat_settings

            ref = base_model_ref(adapter, model) if adapter else model
            gen = make_generator(
                "vllm",
                tokenizer=load_tokenizer(ref, **run_chat_settings(adapter)),  # the SFT run's chat template
                max_new_tokens=max_new_tokens,
                system_prompt=system_prompt,
                dtype=dtype,
                seed=seed,
                model_ref=ref,
                adapter_dir=adapter,
            )
        else:
            m, tok, _ = hf_model()
            gen = make_generator("hf", m, tok, batch_size, max_new_tokens, system_prompt)
        say(
            f"generating candidates for {len(items)} prompts (base{', sft' if adapter else ''}"
            f"{f', {samples} sampled' if samples else ''})"
        )
        cands = cands_io.generate_candidates(
            items, gen, adapter is not None, max_new_tokens, samples, temperature, seed, log=say
        )
        # kept before judging: `--candidates` reuses them if the judge fails or is changed
        write_jsonl(cand_path, cands_io.candidate_rows(items, cands))

    if judge is JudgeKind.heads:
        m, tok, heads = hf_model()
        j = judges.HeadsJudge(m, tok, heads, system_prompt, batch_size=batch_size)
    elif judge is JudgeKind.endpoint:
        j = judges.EndpointJudge(judge_url, judge_model, os.environ.get(judge_key_env), seed=seed)
    else:
        j = file_judge
    scores = j.score(items, cands)
    rows, skipped = pair_sets.select_pairs(items, cands, scores, j.name, min_gap)
    write_jsonl(cand_path, cands_io.candidate_rows(items, cands, scores if judge is not JudgeKind.file else None))
    write_jsonl(out, rows)
    src = Counter(f"{r['meta']['chosen_source']} over {r['meta']['rejected_source']}" for r in rows)
    say(f"{len(rows)} pairs from {len(items)} prompts → {out} (candidates and scores: {cand_path})")
    if skipped:
        say("skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())))
    if src:
        say("chosen: " + ", ".join(f"{k} {v}" for k, v in src.most_common()))


def export(
    adapter: Annotated[Path, typer.Argument(help="adapter folder, e.g. runs/<run>/adapter")],
    out: Annotated[Path, typer.Argument(help="new folder for the merged model")],
    model: Annotated[
        str | None, typer.Option("--model", help="base model (default: the one the adapter was trained from)")
    ] = None,
    dtype: Annotated[str, typer.Option(help="auto (the base checkpoint's dtype) | bf16 | fp16 | fp32")] = "auto",
    gguf: Annotated[bool, typer.Option("--gguf", help="also write a GGUF file (needs llama.cpp's converter)")] = False,
    gguf_outtype: Annotated[str, typer.Option("--gguf-outtype", help="f16 | bf16 | f32 | q8_0 | auto")] = "f16",
):
    """Merge an adapter into full safetensors weights (+ tokenizer, heads side file); optional GGUF."""
    quiet_libraries()
    from tunesmith.modeling import export as E
    from tunesmith.ui import say

    if not (adapter / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter} is not an adapter folder (no adapter_config.json)")
    path = E.export_merged(adapter, out, model, dtype)
    say(f"merged model written to {path} (load with AutoModelForCausalLM.from_pretrained)")
    if gguf:
        conv = E.find_gguf_converter()
        if conv is None:
            say("[yellow]GGUF skipped:[/] " + E.gguf_instructions(path, gguf_outtype))
        else:
            say(f"GGUF written to {E.export_gguf(path, gguf_outtype, conv)}")


def register(app: typer.Typer, run) -> None:
    def dpo(
        config: Annotated[Path, typer.Argument(help="a recipe: dpo config, e.g. configs/empathy-dpo.yaml")],
        set_: Annotated[
            list[str] | None, typer.Option("--set", help="override a config key: --set dpo.beta=0.2")
        ] = None,
    ):
        """Preference-tune (DPO): `tunesmith run` for a dpo config (held-out reward margin before/after)."""
        from tunesmith.config import load_config

        if load_config(config, set_).recipe != "dpo":
            raise ConfigError(f"{config}: `tunesmith dpo` runs recipe: dpo configs (use `tunesmith run` for others)")
        run(config, smoke_test=False, resume=False, check_thresholds=False, set_=set_)

    app.command("pairs")(pairs)
    app.command("dpo")(dpo)
    app.command("export")(export)
