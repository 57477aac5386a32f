"""Release sets as people see them: overrides checked against the known components, the diff
between an environment and its reference, and the texts that show both.

Why a module of its own: the Slack edge (`/ephem create --set`, `--dry-run`, `/ephem diff`,
`/ephem status`) and the demo need the same rules and the same table, and none of it does I/O,
so it is table-tested on its own. `bot.domain.ReleaseSet` is the value; this module is what is
done with it. Where a set comes from (the blueprint, a cluster, a command, a URL) is
`pipelines.code.sources`, behind `bot.ports.ReleaseResolver`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bot.errors import UserError

DIFFERS = "≠"  # the marker in the diff table's last column
_MISSING = "-"


def apply_overrides(base: Mapping[str, str], overrides: Mapping[str, str], *,
                    known: Iterable[str] = ()) -> dict[str, str]:
    """`base` with `overrides` applied; raise UserError for an unknown component or an empty
    version.

    The components a set may name are those of `base` and `known` (the blueprint's
    `components`). When both are empty nothing is known to check against, and every override
    is taken as given (a project that lists no components).
    """
    valid = sorted(set(base) | set(known))
    for component, version in overrides.items():
        if not version.strip():
            raise UserError(f"`--set {component}=` has no version; give one, like "
                            f"`--set {component}=2.8.0-rc1`.")
        if valid and component not in valid:
            raise UserError(unknown_component(component, valid))
    return {**base, **overrides}


def unknown_component(component: str, valid: Iterable[str]) -> str:
    """`--set` named a component that is not in the set: the valid names and a guess."""
    names = sorted(valid)
    guess = difflib.get_close_matches(component, names, n=1, cutoff=0.6)
    hint = f" Did you mean `{guess[0]}`?" if guess else ""
    listed = ", ".join(f"`{n}`" for n in names)
    return (f"`--set {component}=…`: there is no component `{component}`.{hint} "
            f"Components: {listed}.")


@dataclass(frozen=True)
class DiffRow:
    component: str
    mine: str | None  # the environment's version; None: not in its set
    theirs: str | None  # the reference's version now; None: not in the reference any more

    @property
    def differs(self) -> bool:
        return self.mine != self.theirs


def diff_rows(mine: Mapping[str, str], theirs: Mapping[str, str]) -> list[DiffRow]:
    """Every component of either set, by name, with both versions."""
    return [DiffRow(c, mine.get(c), theirs.get(c)) for c in sorted(set(mine) | set(theirs))]


def render_table(rows: Iterable[DiffRow], *, mine: str, theirs: str) -> str:
    """A fixed-width table (for a code block): component, both versions, a marker where they
    differ. `mine` and `theirs` head the version columns."""
    lines = [("component", mine, theirs, "")]
    lines += [(r.component, r.mine or _MISSING, r.theirs or _MISSING,
               DIFFERS if r.differs else "") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(
        ("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line[:3])) + "  " + line[3])
        .rstrip()
        for line in lines
    )


def diff_summary(rows: Iterable[DiffRow]) -> str:
    """'2 of 5 components differ' / 'identical (5 components)'."""
    listed = list(rows)
    changed = sum(1 for r in listed if r.differs)
    if not changed:
        return f"identical ({len(listed)} component{'s' if len(listed) != 1 else ''})"
    return f"{changed} of {len(listed)} component{'s' if len(listed) != 1 else ''} differ" + (
        "s" if changed == 1 else "")


def summary(versions: Mapping[str, str]) -> str:
    """`api=2.8.0-rc1, web=5.1.0`, by component name; `(empty)` for an empty set."""
    return ", ".join(f"{c}={v}" for c, v in sorted(versions.items())) or "(empty)"
