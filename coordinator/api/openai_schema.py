"""OpenAI-style request bodies -> validated, frozen requests; errors in OpenAI's shape.

Pure: a parsed JSON body in, a ChatCompletion/Completion request or an ApiError out.
Knows nothing of workers or sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coordinator.engine.drafting import METHODS
from coordinator.engine.router import POLICIES, RouterConfig
from coordinator.types import ApiError
from shards.sampling import SamplingParams

ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass(frozen=True)
class ParsedRequest:
    model: str
    messages: tuple[dict[str, str], ...] | None   # chat
    prompt: str | None                              # completion
    params: SamplingParams
    max_tokens_given: bool
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    codec: str | None
    return_token_ids: bool
    router: RouterConfig | None       # None: the server's default
    speculation: dict[str, Any] | None = None   # checked overrides of the server's SpeculationConfig


def _number(body: dict, name: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ApiError(400, f"'{name}' must be a number", name)
    if value < low or value > high or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ApiError(400, f"'{name}' must be in {bound}, got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer", name)
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", name)
    return value


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, f"messages[{index}].content: only text parts are supported",
                               f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{index}].content must be a string", f"messages[{index}].content")


def _model(body: dict, model_ids: tuple[str, ...]) -> str:
    model = body.get("model", model_ids[0])
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string", "model")
    if model not in model_ids:
        raise ApiError(404, f"the model '{model}' does not exist; available: {', '.join(model_ids)}",
                       "model", "model_not_found")
    return model


def _messages(body: dict) -> tuple[dict[str, str], ...]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    checked = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{index}] must be an object", f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}",
                           f"messages[{index}].role")
        checked.append({"role": "system" if role == "developer" else role, "content": _content(message, index)})
    return tuple(checked)


def _prompt(body: dict) -> str:
    raw_prompt = body.get("prompt")
    if isinstance(raw_prompt, list) and len(raw_prompt) == 1 and isinstance(raw_prompt[0], str):
        raw_prompt = raw_prompt[0]
    if not isinstance(raw_prompt, str) or not raw_prompt:
        raise ApiError(400, "'prompt' must be a non-empty string", "prompt")
    return raw_prompt


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop):
        return tuple(stop)
    raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")


def _object(body: dict, field: str) -> dict:
    value = body.get(field) or {}
    if not isinstance(value, dict):
        raise ApiError(400, f"'{field}' must be an object", field)
    return value


def parse_request(body: Any, chat: bool, model_ids: tuple[str, ...], codecs: list[str]) -> ParsedRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _model(body, model_ids)
    messages, prompt = (_messages(body), None) if chat else (None, _prompt(body))
    if _integer(body, "n", 1, 1, 1) != 1:
        raise ApiError(400, "only n = 1 is supported", "n")
    max_tokens = _integer(body, "max_completion_tokens", None, 1, 1 << 20)
    max_tokens = _integer(body, "max_tokens", max_tokens, 1, 1 << 20)
    stops = _stops(body)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be a boolean", "stream")
    options = _object(body, "stream_options")
    extension = _object(body, "tabswarm")
    codec = extension.get("codec")
    if codec is not None and codec not in codecs:
        raise ApiError(400, f"'tabswarm.codec' must be one of {', '.join(codecs)}", "tabswarm.codec")
    router = _router(extension.get("router"))
    speculation = _speculation(extension.get("speculation"))
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "'seed' must be an integer", "seed")
    params = SamplingParams(
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0),  # greedy unless asked: deterministic
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", 0, 0, 1 << 20) or 0,
        seed=seed,
        max_tokens=max_tokens or 1,
    )
    return ParsedRequest(model=model, messages=messages, prompt=prompt, params=params,
                         max_tokens_given=max_tokens is not None, stop=stops, stream=stream,
                         include_usage=bool(options.get("include_usage", False)), codec=codec,
                         return_token_ids=bool(extension.get("return_token_ids", False)), router=router,
                         speculation=speculation)


def _speculation(value: Any) -> dict[str, Any] | None:
    """`tabswarm.speculation`: {"method": "lookup" | "self" | "off", "max_draft": 1..32,
    "adaptive": bool, "pipelined": bool (lookup drafts in chunks, one per stage in flight),
    "draft_router": a router object (the self drafter's skips)}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, "'tabswarm.speculation' must be an object", "tabswarm.speculation")
    unknown = set(value) - {"method", "max_draft", "adaptive", "pipelined", "draft_router"}
    if unknown:
        raise ApiError(400, f"'tabswarm.speculation' has unknown fields: {', '.join(sorted(unknown))}",
                       "tabswarm.speculation")
    options: dict[str, Any] = {}
    if "method" in value:
        if value["method"] not in METHODS:
            raise ApiError(400, f"'tabswarm.speculation.method' must be one of {', '.join(METHODS)}",
                           "tabswarm.speculation.method")
        options["method"] = value["method"]
    if "max_draft" in value:
        options["max_draft"] = _integer(value, "max_draft", 4, 1, 32)
    if "adaptive" in value:
        if not isinstance(value["adaptive"], bool):
            raise ApiError(400, "'tabswarm.speculation.adaptive' must be a boolean", "tabswarm.speculation.adaptive")
        options["adaptive"] = value["adaptive"]
    if "pipelined" in value:
        if not isinstance(value["pipelined"], bool):
            raise ApiError(400, "'tabswarm.speculation.pipelined' must be a boolean", "tabswarm.speculation.pipelined")
        options["pipelined"] = value["pipelined"]
    if "draft_router" in value:
        options["draft_router"] = _router(value["draft_router"])
    return options


ROUTER_KNOBS = ("threshold", "capacity", "node_threshold")


def _router(value: Any) -> RouterConfig | None:
    """`tabswarm.router`: {"policy": ..., "threshold" | "capacity" | "node_threshold": number,
    "protect_tokens": int, "script": [[position, layer], ...], "prune_heads": number in [0, 0.5],
    "head_script": [[layer, head], ...]}."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("policy") not in POLICIES:
        raise ApiError(400, f"'tabswarm.router' must be an object with a policy in {', '.join(POLICIES)}",
                       "tabswarm.router")
    options: dict[str, Any] = {"policy": value["policy"]}
    for knob in ROUTER_KNOBS:
        if knob in value:
            options[knob] = _number(value, knob, 0.0, 0.0, 100.0)
    if "protect_tokens" in value:
        options["protect_tokens"] = _integer(value, "protect_tokens", 4, 1, 1 << 20)
    script = value.get("script", [])
    if not isinstance(script, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int) and x >= 0 for x in pair)
            for pair in script):
        raise ApiError(400, "'tabswarm.router.script' must be a list of [position, layer] pairs",
                       "tabswarm.router.script")
    options["script"] = frozenset((position, layer) for position, layer in script)
    if "prune_heads" in value:
        options["prune_heads"] = _number(value, "prune_heads", 0.0, 0.0, 0.5)
    options["head_script"] = frozenset(_pairs(value, "head_script", "[layer, head]"))
    return RouterConfig(**options)


def _pairs(value: dict, name: str, what: str) -> list[tuple[int, int]]:
    pairs = value.get(name, [])
    if not isinstance(pairs, list) or not all(
            isinstance(pair, list) and len(pair) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 20 for x in pair)
            for pair in pairs):
        raise ApiError(400, f"'tabswarm.router.{name}' must be a list of {what} pairs", f"tabswarm.router.{name}")
    return [(first, second) for first, second in pairs]
