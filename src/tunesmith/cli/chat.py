"""CLI commands of the chat feature: `tunesmith chat | serve | redteam`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from tunesmith.errors import TunesmithError
from tunesmith.runs import run_system_prompt
from tunesmith.ui import quiet_libraries

ModelArg = Annotated[
    str, typer.Argument(help="model reference: builtin:<name>, a .gguf file, a local HF folder or org/name")
]
AdapterOpt = Annotated[
    Path | None,
    typer.Option("--adapter", help="adapter folder (LoRA + optional emotion/strategy heads), e.g. runs/<run>/adapter"),
]
LocaleOpt = Annotated[
    str | None,
    typer.Option(
        "--locale",
        help="crisis resources locale, e.g. en_US, en_GB (default: the message's language, else international)",
    ),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", help="system prompt (default: the adapter's run config, else the model's own)")
]
GuardOpt = Annotated[
    str | None,
    typer.Option(
        "--guard", help="a Llama Guard style model whose verdict on each user message is a further crisis signal"
    ),
]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto | bf16 | fp16 | fp32")]


def load_chat_model(model: str, adapter: Path | None, dtype: str = "auto"):
    """(model, tokenizer, heads or None, system prompt of the adapter's run or None)."""
    from tunesmith.modeling.loading import load_for_inference

    if adapter is not None and not adapter.is_dir():
        raise TunesmithError(f"adapter folder not found: {adapter}")
    m, tok, heads = load_for_inference(adapter, model, dtype)
    return m, tok, heads, run_system_prompt(adapter)


def _crisis_layer(locale: str | None, guard: str | None = None, dtype: str = "auto"):
    """The crisis layer; with `guard` (a Llama Guard style model reference) its verdict on each user
    message (S11 self-harm, S1 violent crimes) is a further signal beside the detector."""
    from tunesmith.chat.crisis import CrisisDetector, CrisisLayer

    layer = CrisisLayer()
    layer.resources.resolve(locale)  # fail before loading a model
    if guard:
        from tunesmith.chat.crisis import guard_signal
        from tunesmith.evaluation.ailuminate import GenerativeGuard, load_categories
        from tunesmith.generation.factory import make_generator
        from tunesmith.modeling.loading import load_model, load_tokenizer

        tok = load_tokenizer(guard)
        gen = make_generator("hf", load_model(guard, dtype), tok, batch_size=1, max_new_tokens=10)
        d = layer.detector
        judge = GenerativeGuard(gen, load_categories(None), "", guard)
        layer.detector = CrisisDetector(d.model, d.rules, d.featurizer, guard=guard_signal(judge))
    return layer


# ------------------------------------------------------------------------------------------ chat


HELP = (
    "/locale [CODE] show or change the crisis-resources locale · /resources show the crisis resources · "
    "/reset new conversation · /quit"
)


def _print_reply(console, reply) -> None:
    """Banner as a panel, predictions as a dim line, then the streamed words."""
    from rich.panel import Panel

    if reply.banner:
        console.print(Panel(reply.banner, title="crisis support", border_style="red", expand=False))
        console.print(f"[dim]flagged: {reply.crisis.category} ({reply.crisis.reason})[/]", highlight=False)
    elif reply.screening.session_flagged:
        # a crisis earlier in this chat: keep the way to help one line away
        first = reply.screening.session_banner.splitlines()[1].lstrip("• ")
        console.print(f"[red]crisis support:[/] {first} [dim](/resources shows the helplines)[/]", highlight=False)
    tags = []
    if reply.emotion:
        tags.append(f"emotion: {reply.emotion.label} {reply.emotion.prob:.0%}")
    if reply.strategy:
        tags.append(f"strategy: {reply.strategy.label} {reply.strategy.prob:.0%}")
    if tags:
        console.print(f"[dim]{' · '.join(tags)}[/]", highlight=False)
    console.print("[bold green]assistant ›[/] ", end="")
    out = console.file
    it = iter(reply)
    try:
        for chunk in it:
            if reply.banner and chunk.startswith(reply.banner):
                continue  # already shown as the panel above
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        reply.cancel()
        it.close()
        out.write(" [interrupted]")
    out.write("\n")
    if reply.dropped_messages:
        console.print(f"[dim](context full: {reply.dropped_messages} oldest messages left out)[/]")


def chat(
    model: ModelArg,
    adapter: AdapterOpt = None,
    locale: LocaleOpt = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    system: SystemOpt = None,
    dtype: DtypeOpt = "auto",
    guard: GuardOpt = None,
    message: Annotated[
        list[str] | None, typer.Option("--message", "-m", help="send these messages in order and exit (no prompt)")
    ] = None,
):
    """Chat in the terminal: streamed replies, crisis resources first when needed, emotion/strategy when the adapter has heads."""
    from rich.console import Console

    from tunesmith.chat.session import ChatSession

    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    layer = _crisis_layer(locale, guard, dtype)
    console = Console(highlight=False)
    with console.status("loading model…"):
        m, tok, heads, run_system = load_chat_model(model, adapter, dtype)
    session = ChatSession(m, tok, heads, layer, max_new_tokens, system if system is not None else run_system, locale)
    if not message:
        console.print(
            f"[bold]tunesmith chat[/] · {model}{' + ' + str(adapter) if adapter else ''} · "
            f"heads: {'yes' if heads is not None else 'no'} · locale: {session.locale} · "
            f"context {session.context_tokens} tokens"
        )
        console.print(f"[dim]{HELP}[/]")
    inputs = iter(message) if message else None
    while True:
        if inputs is not None:
            text = next(inputs, None)
            if text is None:
                return
            console.print(f"[bold cyan]you ›[/] {text}", markup=True)
        else:
            try:
                text = console.input("[bold cyan]you ›[/] ")
            except (EOFError, KeyboardInterrupt):
                console.print()
                return
        text = text.strip()
        if not text:
            continue
        if text.startswith("/"):
            cmd, _, arg = text.partition(" ")
            if cmd in ("/quit", "/exit"):
                return
            if cmd == "/resources":
                from rich.panel import Panel

                cat = session.crisis_category or "self_harm"
                console.print(
                    Panel(
                        layer.resources.banner(cat, session.locale),
                        title="crisis support",
                        border_style="red",
                        expand=False,
                    )
                )
            elif cmd == "/reset":
                session.reset()
                console.print("[dim]new conversation[/]")
            elif cmd == "/locale":
                if arg.strip():
                    try:
                        console.print(f"[dim]locale: {session.set_locale(arg.strip())}[/]")
                    except TunesmithError as e:
                        console.print(f"[red]{e}[/]")
                else:
                    names = ", ".join(f"{c} ({r.name})" for c, r in layer.resources.locales.items())
                    console.print(f"[dim]locale: {session.locale}; available: {names}[/]")
            else:
                console.print(f"[dim]{HELP}[/]")
            continue
        _print_reply(console, session.respond(text))


# ----------------------------------------------------------------------------------------- serve


def serve(
    model: ModelArg,
    adapter: AdapterOpt = None,
    host: Annotated[
        str, typer.Option("--host", help="address to listen on (loopback unless --allow-remote)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0 picks a free port")] = 8000,
    allow_remote: Annotated[
        bool, typer.Option("--allow-remote", help="allow a non-loopback --host (no authentication!)")
    ] = False,
    locale: LocaleOpt = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", min=1, help="default and ceiling per request")
    ] = 256,
    system: SystemOpt = None,
    dtype: DtypeOpt = "auto",
    guard: GuardOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="model id reported by /v1/models")] = None,
):
    """Serve a local chat page and an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    from rich.console import Console

    from tunesmith.chat.server import ChatBackend, ChatServer, ServeError, is_loopback

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    err = Console(stderr=True)
    if not is_loopback(host):
        if not allow_remote:
            raise ServeError(
                f"--host {host} is not a loopback address; the server has no authentication. "
                "Pass --allow-remote to expose it anyway"
            )
        err.print(
            f"[bold yellow]warning:[/] listening on {host}: anyone who can reach this address can use the model "
            "(no authentication, no TLS)"
        )
    layer = _crisis_layer(locale, guard, dtype)
    with err.status("loading model…"):
        m, tok, heads, run_system = load_chat_model(model, adapter, dtype)
    backend = ChatBackend(
        m,
        tok,
        heads,
        layer,
        name or (f"{model}+{adapter.name}" if adapter else model),
        max_new_tokens,
        system if system is not None else run_system,
        locale,
    )
    server = ChatServer(backend, host, port, allow_remote)
    err.print(f"[bold cyan]tunesmith[/] chat page: {server.url}/  ·  OpenAI API: {server.url}/v1  ·  Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# --------------------------------------------------------------------------------------- redteam


def redteam(
    model: ModelArg,
    adapter: AdapterOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="report file (.md or .json; the other format is written beside it)")
    ] = None,
    locale: LocaleOpt = None,
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", min=1, help="reply length per prompt (the checks are on the crisis layer)"),
    ] = 16,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="red-team JSONL (default: the shipped sheet)")] = None,
    system: SystemOpt = None,
    dtype: DtypeOpt = "auto",
    guard: GuardOpt = None,
):
    """Run the red-team sheet through the full chat pipeline; PASS/FAIL on crisis recall, benign false positives and resources-first."""
    from rich.console import Console

    from tunesmith.chat.redteam import load_sheet, rich_table, run_redteam, write_report
    from tunesmith.chat.session import ChatSession
    from tunesmith.ui import progress_bar

    quiet_libraries()
    items = load_sheet(sheet)
    layer = _crisis_layer(locale, guard, dtype)
    err = Console(stderr=True)
    with err.status("loading model…"):
        m, tok, heads, run_system = load_chat_model(model, adapter, dtype)
    sys_prompt = system if system is not None else run_system

    def make_session() -> ChatSession:
        return ChatSession(m, tok, heads, layer, max_new_tokens, sys_prompt, locale)

    bar, task = progress_bar("red-team", len(items))
    with bar:
        report = run_redteam(
            make_session,
            items,
            model + (f" + {adapter}" if adapter else ""),
            max_new_tokens,
            progress=lambda n, total: bar.update(task, completed=n),
        )
    Console().print(rich_table(report))
    for c in report.checks:  # plain lines too: greppable in CI logs
        typer.echo(f"{c.result} {c.name}: {c.value:.3f} (target {c.target}; {c.detail})")
    if out:
        md, js = write_report(report, out)
        err.print(f"report written to {md} and {js}")
    if not report.passed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
    app.command("serve")(serve)
    app.command("redteam")(redteam)
