"""The App Home tab: a person's live environments, and the approval requests waiting for them.

Why one module: the Home tab is published (`views.publish`) whenever something it shows
changes — an environment's status, a decision — and when the person opens it
(`app_home_opened`). It is always rebuilt whole from the store by `build_home`, so a publish
that arrives late still shows the present. `load_home` reads the rows into plain values
(`HomeData`) and `home_view` renders them; a column (the cost so far and per day, from the
notifier's `cost`) is a field on `HomeEnv`, filled in `load_home` and shown in `_env_blocks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)
from slack_sdk.models.views import View
from sqlalchemy.ext.asyncio import AsyncSession

from bot import approvals, releases
from bot.domain import EnvStatus
from bot.mrkdwn import escape
from bot.ports import ApproverDirectory
from bot.slack import messages
from bot.slack.approval_card import ApprovalView, approval_view, decision_buttons
from bot.slack.blocks import (
    EXTEND_ACTION,
    MAX_BLOCKS,
    MAX_SECTION_TEXT,
    destroy_button,
    truncate,
)
from bot.store import repo
from bot.store.models import Environment

_MAX_ENVS = 20  # each takes two blocks; the rest are counted, not shown
_MAX_WAITING = 10


@dataclass(frozen=True)
class HomeEnv:
    name: str
    status: EnvStatus
    releases: str  # the release set, summarised
    expires_at: datetime
    cost: str | None = None  # `bot.cost.describe`: so far and per day (None: no prices)


@dataclass(frozen=True)
class HomeData:
    user: str
    envs: tuple[HomeEnv, ...]
    waiting: tuple[ApprovalView, ...]  # requests this person may decide


async def load_home(s: AsyncSession, user: str, directory: ApproverDirectory | None,
                    cost: Callable[[Environment], str | None] | None = None) -> HomeData:
    envs = [HomeEnv(name=e.name, status=e.status,
                    releases=releases.summary(e.release_set) if e.release_set else "",
                    expires_at=e.expires_at, cost=cost(e) if cost is not None else None)
            for e in await repo.live_environments(s, owner_id=user)]
    waiting = []
    for request in await approvals.waiting_for(s, user, directory):
        env = await repo.get_environment(s, request.env_id)
        waiting.append(approval_view(request, env, await approvals.votes(s, request.id)))
    return HomeData(user=user, envs=tuple(envs), waiting=tuple(waiting))


async def build_home(s: AsyncSession, user: str, directory: ApproverDirectory | None,
                     cost: Callable[[Environment], str | None] | None = None
                     ) -> dict[str, Any]:
    """The Home tab of `user`, from the store, as a view for `views.publish`."""
    return home_view(await load_home(s, user, directory, cost))


def _env_blocks(env: HomeEnv) -> list[Block]:
    text = (f"{messages.status_emoji(env.status)} *{escape(env.name)}* — {env.status} · "
            f"expires {messages.slack_date(env.expires_at)}")
    if env.cost:
        text += f" · {env.cost}"
    if env.releases:
        text += f"\n{escape(env.releases)}"
    blocks: list[Block] = [SectionBlock(text=MarkdownTextObject(
        text=truncate(text, MAX_SECTION_TEXT)))]
    if env.status in (EnvStatus.READY, EnvStatus.FAILED):
        blocks.append(ActionsBlock(elements=[
            ButtonElement(text=messages.EXTEND, action_id=EXTEND_ACTION, value=env.name),
            destroy_button(env.name)]))
    return blocks


def _waiting_blocks(view: ApprovalView) -> list[Block]:
    text = (f"*#{view.id}* <@{view.requester}> asks for snapshot `{escape(view.snapshot)}` "
            f"(rules `{escape(view.rules_version)}`) on *{escape(view.env_name)}*: "
            f"{escape(view.reason)}\nDecide before {messages.slack_date(view.expires_at)}.")
    return [SectionBlock(text=MarkdownTextObject(text=truncate(text, MAX_SECTION_TEXT))),
            decision_buttons(view.id)]


def home_view(data: HomeData) -> dict[str, Any]:
    blocks: list[Block] = []
    if data.waiting:
        blocks.append(HeaderBlock(text=PlainTextObject(text="Waiting for your decision")))
        for view in data.waiting[:_MAX_WAITING]:
            blocks += _waiting_blocks(view)
        if len(data.waiting) > _MAX_WAITING:
            blocks.append(ContextBlock(elements=[MarkdownTextObject(
                text=f"{len(data.waiting) - _MAX_WAITING} more: `/ephem pending`.")]))
        blocks.append(DividerBlock())
    blocks.append(HeaderBlock(text=PlainTextObject(text="Your environments")))
    if not data.envs:
        blocks.append(SectionBlock(text=MarkdownTextObject(
            text="No live environments. Make one with `/ephem create`.")))
    for env in data.envs[:_MAX_ENVS]:
        blocks += _env_blocks(env)
    if len(data.envs) > _MAX_ENVS:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(
            text=f"{len(data.envs) - _MAX_ENVS} more: `/ephem list --mine`.")]))
    return View(type="home", blocks=blocks[:MAX_BLOCKS]).to_dict()
