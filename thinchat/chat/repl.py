"""The terminal chat loop behind ``python cli_demo.py`` and ``thinchat chat`` (their options and the
model loading are in ``thinchat/commands/chat.py``).

Why one loop for two entry points: LLaVA's CLI needed a restart to change the image; here ``/image``
switches slides mid-conversation, and the same loop serves people (readline editing and history,
streamed answers, Ctrl-C stops an answer) and scripts. With piped stdin it prints exactly one stdout
line per question (newlines inside an answer written as ``\\n``, see :func:`escape`, or one JSON object per line with
``--jsonl``) and sends everything else (errors, notes) to stderr, so
``printf 'q1\\nq2\\n' | thinchat chat ... > answers.txt`` lines up with the questions.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from thinchat.chat.session import ChatSession
from thinchat.errors import ThinchatError

COMMANDS = ("/image", "/reset", "/save", "/help", "/quit")
HELP = """commands:
  /image PATH [PATH2]  switch slide (e.g. the PPL and XPL views); /image alone lists the current one
  /reset               forget the conversation
  /save FILE           write the transcript as JSON (dataset format: image + conversations)
  /help                this help
  /quit                leave (Ctrl-D too); Ctrl-C stops an answer
anything else is a question about the current slide"""


def talk(session: ChatSession, stdin: TextIO, stdout: TextIO, stderr: TextIO, *, jsonl: bool = False) -> int:
    """Chat on ``session`` until /quit or end of input; returns the exit status (1: a scripted question
    failed). A terminal gets prompts and streamed answers, piped input one stdout line per question."""
    interactive = stdin.isatty()
    repl = _Repl(session, stdout, stderr, interactive=interactive, jsonl=jsonl)
    if interactive:
        print(
            f"thinchat: chatting with {session.engine.name} ({len(session.images)} image(s)); /help for commands",
            file=stderr,
        )
        return repl.loop(_readline_lines(stderr))
    return repl.loop(line.rstrip("\r\n") for line in stdin)


def load_images(paths: list[str]) -> tuple[list[Any], list[str]]:
    """Decoded images and their absolute paths (the transcript's labels)."""
    from thinchat.images import load_image

    return [load_image(p) for p in paths], [str(Path(p).expanduser().resolve()) for p in paths]


def _readline_lines(stderr: TextIO):
    """Prompted input with line editing, history (kept across sessions) and command completion."""
    import readline

    state = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "thinchat"
    history = state / "chat_history"
    try:
        readline.read_history_file(history)
    except FileNotFoundError:
        pass
    except OSError as exc:
        print(f"note: could not read the input history {history}: {exc}", file=stderr)
    readline.set_history_length(1000)
    readline.set_completer(lambda text, i: ([c for c in COMMANDS if c.startswith(text)] + [None])[i])
    readline.set_completer_delims(" \t\n")  # complete "/image" as one word
    readline.parse_and_bind("tab: complete")
    try:
        while True:
            try:
                yield input(">>> ")
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh prompt, not an exit
                print(file=stderr)
            except EOFError:  # Ctrl-D
                print(file=stderr)
                return
    finally:
        try:
            state.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError as exc:
            print(f"note: could not save the input history to {history}: {exc}", file=stderr)


def escape(answer: str) -> str:
    """One line per answer for scripts: backslash, newline and carriage return written as escapes."""
    return answer.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class _Repl:
    def __init__(self, session, stdout: TextIO, stderr: TextIO, *, interactive: bool, jsonl: bool):
        self.session, self.out, self.err = session, stdout, stderr
        self.interactive, self.jsonl = interactive, jsonl
        self.failures = 0

    def say(self, message: str) -> None:
        """One line to stderr (never stdout, which scripts read)."""
        print(" ".join(str(message).split("\n")), file=self.err, flush=True)

    def loop(self, lines) -> int:
        for line in lines:
            text = line.strip()
            if not text:
                if not self.interactive:
                    self.say("skipped an empty line (not a question)")
                continue
            if text.startswith("/"):
                if not self.command(text):
                    break
                continue
            self.question(text)
        return 1 if self.failures and not self.interactive else 0

    def command(self, text: str) -> bool:
        """Run a /command; False means quit."""
        try:
            name, *params = shlex.split(text)
        except ValueError as exc:
            self.say(f"error: cannot parse {text!r}: {exc}")
            return True
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            print(HELP, file=self.err)
        elif name == "/reset":
            self.session.reset()
            self.say("conversation cleared")
        elif name == "/image":
            self.image(params)
        elif name == "/save":
            self.save(params)
        else:
            self.say(f"error: unknown command {name}; commands: {' '.join(COMMANDS)}")
        return True

    def image(self, paths: list[str]) -> None:
        if not paths:
            current = self.session.image_sources
            self.say(f"current slide: {', '.join(str(s) for s in current) if current else 'none'}")
            return
        try:
            images, sources = load_images(paths)
        except ThinchatError as exc:
            self.say(f"error: {exc} (the slide is unchanged)")
            return
        self.session.set_images(images, sources)
        self.say(f"slide switched to {', '.join(paths)}; the next question is about it")

    def save(self, params: list[str]) -> None:
        if len(params) != 1:
            self.say("error: usage: /save FILE")
            return
        path = Path(params[0]).expanduser()
        try:
            path.write_text(
                json.dumps(self.session.transcript(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
            )
        except OSError as exc:
            self.say(f"error: could not write {path}: {exc.strerror or exc}")
            return
        self.say(f"saved {len(self.session.turns)} turn(s) to {path}")

    def question(self, text: str) -> None:
        """Answer ``text``; a look-first description before it is streamed to a terminal, and kept out
        of a script's answer line (``--jsonl`` records it as ``description``)."""
        description = answer = None
        try:
            for exchange in self.session.exchanges(text):
                if exchange.look and self.interactive:
                    self.out.write(f"[{exchange.question}]\n")
                whole = self._stream(exchange.pieces)
                if whole is None:
                    return
                if exchange.look:
                    description = whole
                else:
                    answer = whole
        except ThinchatError as exc:
            self.fail(text, exc)
            return
        if self.jsonl and not self.interactive:
            record = {"question": text, "answer": answer}
            if description is not None:
                record["description"] = description
            self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif not self.interactive:
            self.out.write(escape(answer) + "\n")
        self.out.flush()
        if self.session.dropped_turns:
            self.say(
                f"note: the {self.session.dropped_turns} oldest turn(s) were left out to fit the context"
            )

    def _stream(self, pieces: Iterator[str]) -> str | None:
        """Show an answer as it streams to a terminal; its whole text, or None after Ctrl-C."""
        answer: list[str] = []
        try:
            for piece in pieces:
                answer.append(piece)
                if self.interactive:
                    self.out.write(piece)
                    self.out.flush()
        except KeyboardInterrupt:
            pieces.close()
            self.say("\n[answer stopped]")
            return None
        finally:
            pieces.close()
        if self.interactive:
            self.out.write("\n\n")
        return "".join(answer).strip()

    def fail(self, text: str, exc: Exception) -> None:
        """Report a failed question; scripts still get one stdout line for it, so lines stay aligned."""
        self.failures += 1
        self.say(f"error: {exc}")
        if not self.interactive:
            line = json.dumps({"question": text, "error": str(exc)}, ensure_ascii=False) if self.jsonl else ""
            self.out.write(line + "\n")
            self.out.flush()
