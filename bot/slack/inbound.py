"""What arrives from Slack, checked before anything reads it: the signature, then the shape.

Why: the endpoint `POST /slack/events` is on the internet, and everything about a request is
chosen by whoever sends it. So, in this order, and before any parser sees the body:

1. `signature_problem` checks Slack's v0 signature (HMAC-SHA256 of `v0:<timestamp>:<raw body>`
   under the signing secret) and that the timestamp is within five minutes. The timestamp must
   be ASCII digits (`nan`, `1e9`, `٣` are refused, not parsed), the scheme `v0=`, the digest 64
   hex digits. What it returns is a fixed phrase, never a piece of the request, so it can be
   logged.
2. `read_body` turns the raw bytes of a *signed* request into a dict the way Slack encodes them
   (a form; a form whose only field is a JSON `payload`; or a JSON body), refusing what is not
   UTF-8 text, not a JSON object, nested deeper than JSON can be, or holding half of a UTF-16
   pair (which PostgreSQL and Slack cannot store).
3. `check` sorts the dict into the kinds Ephem answers and validates the fields each kind's
   listener reads (`SlashCommand`, `BlockActions`, `EventCallback` with `AppMention`), strictly:
   a user id that is a number, `actions` that is a string, a missing `channel_id` — each is
   `Malformed`, answered 400 by `bot.slack.http` before bolt is involved.

The same models are what the listeners in `bot.slack.bolt` read from (Socket Mode requests come
through there without passing `bot.slack.http`), so a listener never indexes into a raw dict.
Neighbours: `bot.slack.http` calls 1-3; `bot.slack.bolt` calls the `read_*` functions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

OWN_PREFIX = "ephem:"  # of the action and callback ids of Ephem's buttons, menus and modals
SIGNATURE_WINDOW_SECONDS = 300  # Slack's own rule: a request older than five minutes is refused
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_FORM_FIELDS = 64

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


class Malformed(Exception):
    """A signed request Ephem cannot read. The message is a short phrase of our own, naming
    fields by their path at most: it is logged, and never carries the request's content."""


# --------------------------------------------------------------------------- 1. the signature


def signature_problem(*, secret: str, body: bytes, timestamp: str | None,
                      signature: str | None, now: float) -> str | None:
    """None when `signature` is Slack's v0 signature of `body` at `timestamp` made with
    `secret`, and `timestamp` is within SIGNATURE_WINDOW_SECONDS of `now`; otherwise what is
    wrong, as a fixed phrase."""
    if not secret:
        return "no signing secret is configured"
    if timestamp is None:
        return "no timestamp"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "a timestamp that is not a number of seconds"
    if abs(now - int(timestamp)) > SIGNATURE_WINDOW_SECONDS:
        return "a timestamp outside the five-minute window"
    if signature is None:
        return "no signature"
    if not signature.startswith("v0="):
        return "a signature scheme other than v0"
    if not _SIGNATURE.fullmatch(signature):
        return "a malformed v0 signature"
    base = b"v0:" + timestamp.encode() + b":" + body
    expected = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return "a signature that does not match"
    return None


# --------------------------------------------------------------------------- 2. the body


class Encoding(StrEnum):
    FORM = "form"  # slash commands, ssl_check
    PAYLOAD = "payload"  # interactive payloads: a form with one field, JSON
    JSON = "json"  # the Events API


def read_body(raw: bytes, content_type: str) -> tuple[Encoding, dict[str, Any]]:
    """The body of a signed request as Slack encodes it, and how; Malformed when it is not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed("the body is not UTF-8 text") from None
    if content_type == JSON:
        return Encoding.JSON, _no_surrogates(_json_object(text, "the JSON body"))
    if content_type != FORM:
        raise Malformed("a content type Slack does not send")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          errors="strict", max_num_fields=_MAX_FORM_FIELDS)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the form cannot be read") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise Malformed("the form repeats a field")
    if "payload" in form:
        if len(form) != 1:
            raise Malformed("the form has fields beside `payload`")
        return Encoding.PAYLOAD, _no_surrogates(_json_object(form["payload"], "the payload"))
    return Encoding.FORM, _no_surrogates(form)


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise Malformed(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise Malformed(f"{what} is not a JSON object")
    return value


def _no_surrogates(body: dict[str, Any]) -> dict[str, Any]:
    """`body` if no string in it (key or value, at any depth) holds a lone surrogate."""
    stack: list[Any] = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise Malformed("a string holds half of a UTF-16 pair")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return body


# --------------------------------------------------------------------------- 3. the shapes

SlackId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Ts = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,12}(\.[0-9]{1,9})?$")]
ShortText = Annotated[str, StringConstraints(max_length=255)]


class _Shape(BaseModel):
    # Strict: a number where a string belongs is an error, not a conversion. Fields Ephem does
    # not read are ignored.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


_M = TypeVar("_M", bound=_Shape)


ResponseUrl = Annotated[str, Field(max_length=2000, pattern=r"^https?://\S+$")]


class SlashCommand(_Shape):
    command: ShortText
    user_id: SlackId
    channel_id: SlackId
    text: str = Field(default="", max_length=8000)
    response_url: ResponseUrl | None = None  # answers without channel membership


class _User(_Shape):
    id: SlackId


class _Channel(_Shape):
    id: SlackId


class _Team(_Shape):
    id: SlackId | None = None


class _Container(_Shape):
    channel_id: SlackId | None = None
    message_ts: Ts | None = None
    view_id: SlackId | None = None


class _Message(_Shape):
    ts: Ts | None = None
    thread_ts: Ts | None = None


class _Option(_Shape):
    value: str = Field(default="", max_length=2000)


class Action(_Shape):
    action_id: ShortText
    value: str = Field(default="", max_length=2000)
    action_ts: Ts | None = None
    selected_option: _Option | None = None  # a menu (static_select): what was chosen

    @property
    def chosen(self) -> str:
        """The button's value, or the chosen option's."""
        if not self.value and self.selected_option is not None:
            return self.selected_option.value
        return self.value


class BlockActions(_Shape):
    type: Literal["block_actions"]
    user: _User
    actions: list[Action] = Field(min_length=1, max_length=25)
    team: _Team | None = None
    channel: _Channel | None = None
    container: _Container | None = None
    message: _Message | None = None
    response_url: ResponseUrl | None = None
    trigger_id: ShortText | None = None  # opens a modal for the clicker (3 seconds)


class _Input(_Shape):
    """One input of a submitted modal: a plain text input's `value` (empty when left blank)."""

    type: ShortText
    value: str | None = Field(default=None, max_length=3000)


class _ViewState(_Shape):
    values: dict[ShortText, dict[ShortText, _Input]] = Field(default_factory=dict)


class _View(_Shape):
    id: SlackId
    type: Literal["modal"]
    callback_id: ShortText = ""
    private_metadata: str = Field(default="", max_length=3000)
    hash: ShortText | None = None
    state: _ViewState = _ViewState()


class ViewSubmission(_Shape):
    type: Literal["view_submission"]
    user: _User
    view: _View
    team: _Team | None = None

    def inputs(self) -> dict[str, str]:
        """Each input's value by its action id."""
        return {action: item.value or "" for block in self.view.state.values.values()
                for action, item in block.items()}


class _Interaction(_Shape):
    """Any other interactive payload: only what bolt reads before it finds no listener."""

    type: ShortText
    user: _User | None = None
    team: _Team | None = None
    channel: _Channel | None = None
    container: _Container | None = None
    message: _Message | None = None


class _Authorization(_Shape):
    team_id: SlackId | None = None
    user_id: SlackId | None = None
    enterprise_id: SlackId | None = None
    is_enterprise_install: bool | None = None


class _Event(_Shape):
    type: ShortText
    user: SlackId | None = None
    channel: SlackId | None = None
    team: SlackId | None = None
    user_team: SlackId | None = None
    text: str | None = None
    ts: Ts | None = None
    thread_ts: Ts | None = None
    event_ts: Ts | None = None
    bot_id: SlackId | None = None
    subtype: ShortText | None = None
    channel_type: ShortText | None = None  # `im` in the app's Messages tab


class EventCallback(_Shape):
    type: Literal["event_callback"]
    event_id: SlackId
    event: _Event
    team_id: SlackId | None = None
    enterprise_id: SlackId | None = None
    authorizations: list[_Authorization] | None = None
    is_ext_shared_channel: bool | None = None


class AppMention(_Shape):
    type: Literal["app_mention"]
    user: SlackId
    channel: SlackId
    text: str = Field(default="", max_length=40000)
    thread_ts: Ts | None = None


class _UrlVerification(_Shape):
    type: Literal["url_verification"]
    challenge: ShortText


class Kind(StrEnum):
    COMMAND = "command"
    ACTION = "action"
    SUBMISSION = "submission"  # a modal of Ephem's own, submitted
    INTERACTION = "interaction"  # an interactive payload Ephem has no listener for
    EVENT = "event"
    URL_VERIFICATION = "url_verification"
    SSL_CHECK = "ssl_check"


def check(encoding: Encoding, body: Mapping[str, Any]) -> Kind:
    """Which kind of request `body` is, its fields validated; Malformed when it is none of the
    kinds Slack sends in that encoding."""
    kind = body.get("type")
    if encoding is Encoding.FORM:
        if "command" in body:
            read_command(body)
            return Kind.COMMAND
        if body.get("ssl_check") == "1":
            return Kind.SSL_CHECK
    elif encoding is Encoding.PAYLOAD:
        if kind == "block_actions":
            read_actions(body)
            return Kind.ACTION
        if kind == "view_submission":
            # One of Ephem's own modals (the deny reason) goes to its listener; any other
            # submission, or one bolt could not read, is an interaction nobody answers.
            try:
                form = read_submission(body)
            except Malformed:
                return Kind.INTERACTION
            return (Kind.SUBMISSION if form.view.callback_id.startswith(OWN_PREFIX)
                    else Kind.INTERACTION)
        if isinstance(kind, str):
            _validated(_Interaction, body, "the interaction")
            return Kind.INTERACTION
    else:
        if kind == "event_callback":
            envelope = read_event(body)
            if envelope.event.type == "app_mention":
                read_mention(body)
            return Kind.EVENT
        if kind == "url_verification":
            _validated(_UrlVerification, body, "the URL verification")
            return Kind.URL_VERIFICATION
    raise Malformed(f"not a kind of request Slack sends as {encoding}")


def read_command(body: Mapping[str, Any]) -> SlashCommand:
    return _validated(SlashCommand, body, "the slash command")


def read_actions(body: Mapping[str, Any]) -> BlockActions:
    actions = _validated(BlockActions, body, "the button click")
    channel_of(actions)
    return actions


def read_submission(body: Mapping[str, Any]) -> ViewSubmission:
    return _validated(ViewSubmission, body, "the submitted form")


def read_event(body: Mapping[str, Any]) -> EventCallback:
    return _validated(EventCallback, body, "the event")


def read_mention(body: Mapping[str, Any]) -> AppMention:
    event = body.get("event")
    return _validated(AppMention, event if isinstance(event, Mapping) else {}, "the mention")


def channel_of(actions: BlockActions) -> str:
    """The channel a click came from (Ephem answers there); Malformed when it has none."""
    if actions.channel is not None:
        return actions.channel.id
    if actions.container is not None and actions.container.channel_id is not None:
        return actions.container.channel_id
    if actions.container is not None and actions.container.view_id is not None:
        # A click on the Home tab (a view) has no channel: what only its person should see
        # goes to them directly (an ephemeral message to a user id's "D" channel is refused
        # by Slack, and the notifier then sends it as a direct message).
        return direct_channel(actions.user.id)
    raise Malformed("the button click has no channel")


def direct_channel(user_id: str) -> str:
    """Where an answer goes that has no channel to go to (a Home tab click, a modal)."""
    return f"D{user_id}"


def _validated(model: type[_M], body: Mapping[str, Any], what: str) -> _M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        # Field paths only (names and list positions): never the values.
        paths = sorted({".".join(str(p) for p in err["loc"]) or "(top)" for err in exc.errors()})
        raise Malformed(f"{what} has unusable fields: {', '.join(paths[:5])}") from None


# --------------------------------------------------------------------------- whom to answer


@dataclass(frozen=True)
class Asker:
    user_id: str
    channel_id: str


_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def asker(body: object) -> Asker | None:
    """Who sent `body` and where, if both can be told safely; never raises."""
    if not isinstance(body, Mapping):
        return None

    def field(mapping: object, key: str) -> str | None:
        value = mapping.get(key) if isinstance(mapping, Mapping) else None
        return value if isinstance(value, str) and _ID.fullmatch(value) else None

    event = body.get("event")
    user = (field(body, "user_id") or field(body.get("user"), "id") or field(event, "user"))
    channel = (field(body, "channel_id") or field(body.get("channel"), "id")
               or field(body.get("container"), "channel_id") or field(event, "channel"))
    return Asker(user, channel) if user and channel else None
