"""Decoding a causal LM on any artifact: one session contract, one sampling loop.

A :class:`DecodeSession` holds one sequence (batch 1) being decoded on one artifact; the KV cache
lives inside it. :class:`ExplicitCache` drives any runner of the step graph (the cache goes in as
``past.*`` and comes back as ``present.*``); a target whose runtime keeps the cache itself
(OpenVINO's stateful IR) gives its own session from ``Runner.decode_session``. The gate, the
benchmark and ``kiln generate`` all decode through :func:`generate` and :func:`perplexity`, so
every target is driven the same way.

The context is bounded here, not by the runtime: AOTInductor runs a sequence past the dims it was
compiled for without a word, so every feed is checked against the signature's ranges. Whether a
prompt and its new tokens fit is :func:`context_misfit`, the one rule the decoder, the gate, the
benchmark and ``kiln generate`` apply: the last new token is picked, never fed, so a prompt of
``p`` tokens with ``n`` new tokens needs ``p + n - 1`` positions of the context.
"""

from __future__ import annotations

import abc
import json
import math
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kiln.errors import ConfigError
from kiln.spec import Arrays, Signature


class StepRunner(Protocol):
    def infer(self, inputs: Arrays) -> Arrays: ...


class ContextError(ConfigError):
    """A prompt plus its new tokens do not fit the artifact's context."""


def positions_needed(prompt_tokens: int, new_tokens: int) -> int:
    """Positions a generation occupies: the prompt and every new token but the last (picked from
    the last step's logits, never fed)."""
    return prompt_tokens + max(new_tokens, 1) - 1


def prompt_room(new_tokens: int, context: int) -> int:
    """The longest prompt that fits ``context`` with ``new_tokens`` (0 or less: none does)."""
    return context - positions_needed(0, new_tokens)


def context_misfit(prompt_tokens: int, new_tokens: int, context: int) -> str | None:
    """The context rule: ``None`` when a prompt of ``prompt_tokens`` with ``new_tokens`` fits an
    artifact's ``context``, else the one line every command says about it."""
    needed = positions_needed(prompt_tokens, new_tokens)
    if needed <= context:
        return None
    return (
        f"a prompt of {_count(prompt_tokens, 'token')} with {_count(new_tokens, 'new token')} needs {needed} "
        f"positions (the last new token is never fed) and this artifact's context is {context} "
        "(dims.past.max + 1); shorten the prompt or lower the new tokens, or rebuild with a larger dims.past"
    )


def check_context(prompt_tokens: int, new_tokens: int, context: int) -> None:
    """Raise :class:`ContextError` with :func:`context_misfit`'s line when the generation does not fit."""
    misfit = context_misfit(prompt_tokens, new_tokens, context)
    if misfit is not None:
        raise ContextError(misfit)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class DecodeSession(abc.ABC):
    """One sequence being decoded: ``feed`` appends tokens and returns their next-token logits."""

    def __init__(self, sig: Signature) -> None:
        assert sig.cache is not None, "a decode session needs a causal LM's step signature"
        self.sig = sig
        self.context = sig.context_length()
        self.max_step = sig.dims["sequence"].max
        self.length = 0

    def reset(self) -> None:
        """Forget the sequence (the cache is emptied)."""
        self.length = 0
        self._reset()

    def feed(self, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` (chunked by the graph's sequence range) and return ``[len(ids), vocab]``
        float32 logits."""
        if not ids:
            raise ValueError("feed needs at least one token")
        check_context(self.length + len(ids), 1, self.context)  # what is fed, for its next token
        chunks = []
        for start in range(0, len(ids), self.max_step):
            chunk = np.asarray(ids[start : start + self.max_step], dtype=np.int64)[None]
            positions = np.arange(self.length, self.length + chunk.shape[1], dtype=np.int64)[None]
            chunks.append(np.asarray(self._step(chunk, positions), dtype=np.float32)[0])
            self.length += chunk.shape[1]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    @abc.abstractmethod
    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Run one chunk ``[1, n]`` at ``positions``; return its logits ``[1, n, vocab]``."""

    @abc.abstractmethod
    def _reset(self) -> None: ...

    def close(self) -> None:
        """Release what the session holds (the runner stays open)."""


def step_feed(sig: Signature, ids: np.ndarray, positions: np.ndarray) -> Arrays:
    """``input_ids`` and ``position_ids`` of one chunk of one sequence, with the all-ones
    ``attention_mask`` over the past and the chunk where the step graph takes one."""
    feed = {"input_ids": ids, "position_ids": positions}
    if sig.cache is not None and sig.cache.attention_mask:
        feed["attention_mask"] = np.ones((ids.shape[0], int(positions[0, -1]) + 1), dtype=np.int64)
    return feed


class ExplicitCache(DecodeSession):
    """The cache as the step graph's inputs and outputs, carried between calls by kiln."""

    def __init__(self, runner: StepRunner, sig: Signature) -> None:
        super().__init__(sig)
        self.runner = runner
        self._reset()

    def _reset(self) -> None:
        cache = self.sig.cache
        assert cache is not None
        empty = np.zeros((1, cache.kv_heads, 0, cache.head_dim), dtype=np.float32)
        self.past: Arrays = dict.fromkeys(cache.past_names, empty)

    def _step(self, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
        cache = self.sig.cache
        assert cache is not None
        out = self.runner.infer({**step_feed(self.sig, ids, positions), **self.past})
        self.past = {p: out[q] for p, q in zip(cache.past_names, cache.present_names, strict=True)}
        return out["logits"]


def session_for(runner: Any, sig: Signature) -> DecodeSession:
    """The runner's own session when its runtime keeps the cache, else the explicit one."""
    own = getattr(runner, "decode_session", None)
    made = own(sig) if callable(own) else None
    return made if made is not None else ExplicitCache(runner, sig)


@dataclass(frozen=True)
class Sampling:
    """Greedy by default; temperature with top-k and top-p (nucleus) when ``temperature > 0``."""

    temperature: float = 0.0
    top_k: int | None = None
    seed: int | None = None
    top_p: float | None = None  # keep the likeliest tokens whose probabilities reach top_p (None or 1: all)


def pick(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    if sampling.top_k is not None and sampling.top_k < scaled.size:
        cut = np.partition(scaled, -sampling.top_k)[-sampling.top_k]
        scaled = np.where(scaled < cut, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-probs, kind="stable")
        kept = order[: int(np.searchsorted(np.cumsum(probs[order]), sampling.top_p)) + 1]
        nucleus = np.zeros_like(probs)
        nucleus[kept] = probs[kept]
        probs = nucleus / nucleus.sum()
    return int(rng.choice(scaled.size, p=probs))


def generate(
    session: DecodeSession,
    prompt: Sequence[int],
    new_tokens: int,
    sampling: Sampling = Sampling(),
    eos: Collection[int] = (),
    logits_out: list[np.ndarray] | None = None,
) -> Iterator[int]:
    """Stream up to ``new_tokens`` token ids after ``prompt`` (the session is reset first), stopping
    after any id of ``eos``. Each step's next-token logits are appended to ``logits_out`` when given."""
    check_context(len(prompt), new_tokens, session.context)
    session.reset()
    rng = np.random.default_rng(sampling.seed)
    logits = session.feed(list(prompt))[-1]
    for step in range(new_tokens):
        if logits_out is not None:
            logits_out.append(logits)
        token = pick(logits, sampling, rng)
        yield token
        if token in eos or step + 1 == new_tokens:
            return
        logits = session.feed([token])[-1]


def forced(session: DecodeSession, prompt: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
    """Teacher forcing: the next-token logits at every step when ``tokens`` are fed one at a time
    after the prompt (the decode path, not one long prefill): ``[len(tokens), vocab]``."""
    check_context(len(prompt), len(tokens), session.context)
    session.reset()
    rows = [session.feed(list(prompt))[-1]]
    for token in tokens[:-1]:
        rows.append(session.feed([token])[-1])
    return np.stack(rows)


def perplexity(session: DecodeSession, ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of ``ids``, scored in windows of the session's context
    (each window prefilled in chunks of the graph's sequence range, so the cache is exercised)."""
    nll, count = 0.0, 0
    window = session.context
    for start in range(0, max(len(ids) - 1, 1), window):
        chunk = list(ids[start : start + window])
        if len(chunk) < 2:
            break
        session.reset()
        logits = session.feed(chunk).astype(np.float64)
        shifted = logits[:-1]
        top = shifted.max(axis=1, keepdims=True)
        logz = (top + np.log(np.exp(shifted - top).sum(axis=1, keepdims=True)))[:, 0]
        targets = np.asarray(chunk[1:])
        nll += float((logz - shifted[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return math.exp(nll / count) if count else float("nan")


SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


class Tokenizer:
    """Text to ids and back as ``transformers.AutoTokenizer`` does for the same folder, with the
    ``tokenizers`` library alone (what a device has), from the ``tokenizer.json`` an artifact carries.

    ``encode`` adds what the tokenizer's post-processor adds (a BOS, as Llama's and Gemma's do);
    like transformers 5, ``add_bos_token``/``add_eos_token`` in ``tokenizer_config.json`` change
    nothing once a ``tokenizer.json`` is there. ``decode`` drops special tokens and cleans up
    spaces where the config asks (never for BPE, as transformers). ``eos_ids`` are every id to
    stop on: the tokenizer's EOS and ``generation_config.json``'s ``eos_token_id`` (one or a list).
    Where the config names a model class whose pipeline transformers rebuilds (``LlamaTokenizer``),
    an older ``tokenizer.json`` can differ from it at the edges: the export re-saves it
    (:func:`kiln.capture.exporters.copy_tokenizer`).
    """

    def __init__(self, folder: Path) -> None:
        try:
            from tokenizers import AddedToken
            from tokenizers import Tokenizer as Fast
        except ImportError as err:
            raise ConfigError("decoding text needs tokenizers; pip install 'kiln[hf]' -c constraints.txt") from err
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"{folder} has no tokenizer.json; save the tokenizer with save_pretrained (a fast one)")
        self.folder = folder
        self._tok = Fast.from_file(str(path))
        self._tok.no_truncation()  # transformers' call neither truncates nor pads unless asked
        self._tok.no_padding()
        self._settings = _read_json(folder / "tokenizer_config.json")
        self.specials = _named_specials(self._settings)  # what a chat template sees as bos_token, ...
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        missing = [t for t in (*self.specials.values(), *_extra_specials(self._settings)) if t not in added]
        if missing:  # transformers adds the special tokens its config names and tokenizer.json lacks
            self._tok.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)]
            )
        self._cleanup = bool(self._settings.get("clean_up_tokenization_spaces", False)) and (
            type(self._tok.model).__name__ != "BPE"
            or bool(self._settings.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
        )
        eos = self._tok.token_to_id(self.specials["eos_token"]) if "eos_token" in self.specials else None
        stop = _read_json(folder / "generation_config.json").get("eos_token_id")
        listed = stop if isinstance(stop, list) else [stop]
        self.eos_ids: tuple[int, ...] = tuple(
            dict.fromkeys(i for i in (eos, *listed) if isinstance(i, int) and not isinstance(i, bool))
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``text``'s ids, with the post-processor's special tokens unless ``add_special_tokens`` is off
        (a chat template's text carries its own)."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int]) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=True)
        return _clean_up_spaces(text) if self._cleanup else text

    def apply_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """``messages`` (``{"role", "content"}``) rendered with the folder's chat template as
        transformers' ``apply_chat_template`` renders them; a folder without one is a ``ConfigError``."""
        template = self._chat_template()
        env = _chat_environment()
        chat = [{key: value for key, value in m.items() if value is not None} for m in messages]
        from jinja2 import TemplateError

        try:
            return env.from_string(template).render(
                messages=chat, tools=None, documents=None, add_generation_prompt=add_generation_prompt, **self.specials
            )
        except TemplateError as err:
            raise ConfigError(f"{self.folder}: the chat template refused the messages ({err})") from err

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """The chat's ids as ``apply_chat_template(tokenize=True)`` gives them: the rendered text
        without the post-processor's tokens (the template writes its own BOS)."""
        return self.encode(self.apply_chat(messages, add_generation_prompt), add_special_tokens=False)

    @property
    def has_chat_template(self) -> bool:
        try:
            self._chat_template()
        except ConfigError:
            return False
        return True

    def _chat_template(self) -> str:
        file = self.folder / CHAT_TEMPLATE_FILE
        if file.is_file():  # transformers reads it before the config's entry
            return file.read_text(encoding="utf-8")
        given = self._settings.get("chat_template")
        if isinstance(given, list):  # named templates: the default one
            given = {t.get("name"): t.get("template") for t in given if isinstance(t, dict)}.get("default")
        if not isinstance(given, str):
            raise ConfigError(
                f"{self.folder} has no chat template; a chat needs a chat (instruct) model's tokenizer, with "
                f"{CHAT_TEMPLATE_FILE} or a default chat_template in tokenizer_config.json (without --chat, "
                "the prompt is continued as plain text)"
            )
        return given


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _content(token: Any) -> str | None:
    text = token.get("content") if isinstance(token, dict) else token
    return text if isinstance(text, str) else None


def _named_specials(settings: Mapping[str, Any]) -> dict[str, str]:
    """The config's named special tokens (``bos_token`` ... and a model's own ``*_token`` names)."""
    named = {k: v for k, v in settings.items() if k in SPECIAL_TOKENS or k.endswith("_token")}
    for key in ("extra_special_tokens", "model_specific_special_tokens"):
        more = settings.get(key)
        named.update(more if isinstance(more, dict) else {})
    return {k: text for k, v in named.items() if (text := _content(v)) is not None}


def _extra_specials(settings: Mapping[str, Any]) -> list[str]:
    extra = settings.get("extra_special_tokens", settings.get("additional_special_tokens"))
    tokens = extra.values() if isinstance(extra, dict) else extra if isinstance(extra, list) else []
    return [text for t in tokens if (text := _content(t)) is not None]


def _clean_up_spaces(text: str) -> str:
    """transformers' ``clean_up_tokenization``: no space before punctuation and English contractions."""
    for spaced in (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"):
        text = text.replace(spaced, spaced.strip())
    return text


@lru_cache(maxsize=1)
def _chat_environment() -> Any:
    """Jinja as transformers renders chat templates: sandboxed, trim_blocks and lstrip_blocks,
    ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII, loop controls, and
    ``{% generation %}`` blocks (an assistant-mask marker) rendered as their body."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as err:
        raise ConfigError("chat templates need jinja2 (torch brings it); pip install 'jinja2>=3.1.6'") from err
    if tuple(int(n) for n in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):  # sandbox escapes before
        raise ConfigError(f"chat templates need jinja2 3.1.6 or later (this is {jinja2.__version__}); upgrade it")

    class Generation(Extension):
        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now)
    return env


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int]) -> Iterator[str]:
    """Text as it grows: decoding the whole sequence each time keeps multi-token characters whole.
    A character still incomplete when the tokens end (the last token a UTF-8 lead byte) is flushed
    as U+FFFD, as the tokenizer decodes it: every token generated is shown."""
    seen: list[int] = []
    shown = text = ""
    for token in tokens:
        seen.append(token)
        text = tokenizer.decode(seen)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            continue
        yield text[len(shown) :]
        shown = text
    if len(text) > len(shown):
        yield text[len(shown) :]


# Text for data-aware weight compression (AWQ, scale estimation, sensitivity ranking) when a causal
# LM's build gives none: plain English of several registers, a little code and a chat exchange,
# written for kiln. It shares no sentence with the gate's held-out text (kiln.gate.reference), so an
# artifact is never graded on the text it was calibrated on.
CALIBRATION_TEXT = """The river rose slowly through the night, and by morning the lower fields were under a
foot of brown water. Farmers moved their animals to the ridge, where the old stone barn still stood,
and children carried sacks of grain up the muddy path two at a time. Nobody panicked; the valley had
flooded before, and everyone knew the water would be gone within a week.

A good recipe for bread needs only four things: flour, water, salt and yeast. Mix them, knead the
dough until it is smooth and elastic, then let it rest somewhere warm until it has doubled in size.
Shape the loaf, let it rise again, and bake it in a hot oven for about forty minutes. The crust
should sound hollow when you tap the bottom.

In 1869 the first transcontinental railroad in the United States was completed, joining the
eastern network with the Pacific coast. Travel that had taken months by wagon now took about a
week. Towns grew along the line, prices of goods fell, and the telegraph wires strung beside the
tracks carried news across the country in minutes.

Photosynthesis is the process by which green plants turn light into chemical energy. Chlorophyll
in the leaves absorbs mostly red and blue light, and the plant uses that energy to combine carbon
dioxide from the air with water from the soil, making glucose and releasing oxygen.

def average(values):
    \"\"\"Return the arithmetic mean of a non-empty list of numbers.\"\"\"
    if not values:
        raise ValueError("average() needs at least one value")
    return sum(values) / len(values)

for name, score in sorted(scores.items(), key=lambda item: item[1], reverse=True):
    print(f"{name:>10}: {score:6.2f}")

User: Can you suggest a name for a small coffee shop near the harbour?
Assistant: How about "The Anchor Cup"? It hints at the harbour, sounds friendly, and is easy to
remember. Other options are "Tide & Roast" or "Harbour Light Coffee".
User: What is the difference between weather and climate?
Assistant: Weather is what the atmosphere is doing over a short period, such as today's rain or
tomorrow's wind. Climate is the average pattern of weather in a region over many years.

The committee met on Tuesday to review the budget for the coming year. Most members agreed that the
library needed new computers, but there was a long debate about whether to repair the roof first.
In the end they voted to do both, paying for the roof from the reserve fund and spreading the cost
of the computers over three years."""
