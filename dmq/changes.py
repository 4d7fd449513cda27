"""
What changes to a DMQ node list report, and the policy timeouts follow: the
values :class:`~dmq.nodelist.NodeList` takes and returns.

- :class:`Event` / :class:`EventKind`: a membership event about one remote
  node, named as Kamailio's ``event_route[dmq:peer-up|peer-down|peer-disabled]``;
- :class:`MergeResult`: what merging a received node-list body did;
- :class:`TimeoutPolicy` / :class:`TimeoutOutcome`: what a 408 does to a node.

Pure data: no Twisted, no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dmq.node import Node, NodeStatus

__all__ = ["Event", "EventKind", "MergeResult", "TimeoutOutcome", "TimeoutPolicy"]


class EventKind(enum.Enum):
    """What happened to a remote node, named as Kamailio's event routes."""

    PEER_UP = "peer-up"
    """A remote node became active, or was added as active."""
    PEER_DOWN = "peer-down"
    """A remote node went from active to not active."""
    PEER_DISABLED = "peer-disabled"
    """A remote node became disabled, or was removed while not disabled."""


@dataclass(frozen=True)
class Event:
    """One membership event about one remote node."""

    kind: EventKind
    node: "Node"


@dataclass
class MergeResult:
    """
    What :meth:`NodeList.merge_body` did.

    :ivar added: nodes new to the list, in body order.
    :ivar changed: known nodes whose status the body changed (not those added).
    :ivar events: the events of both, in the order they happened.
    :ivar refused: lines naming a node that was not added: over a cap, an
        address nothing may be sent to, or vouched for by a sender that is
        not a member.
    """

    added: list[Node] = field(default_factory=list)
    changed: list[Node] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    refused: int = 0

    @property
    def changed_anything(self) -> bool:
        """Whether a node was added or changed (what makes a request re-broadcast)."""
        return bool(self.added or self.changed)


@dataclass(frozen=True)
class TimeoutPolicy:
    """
    What a 408 does to a node: Kamailio's dmq modparams of the same names.

    :ivar remove_inactive: a timed-out node becomes disabled (and is deleted
        at the next timeout); when false it only becomes not active.
    :ivar keep_disabled: a timeout of a disabled node keeps it disabled
        instead of deleting it (Kamailio's development branch after 6.1.4).
    :ivar fail_count_enabled: count 408s per node and let the thresholds
        decide (6.1).
    :ivar fail_count_threshold_not_active: active -> not active when the
        count is greater than this.
    :ivar fail_count_threshold_disabled: not active -> disabled when the
        count is greater than this.
    """

    remove_inactive: bool = True
    keep_disabled: bool = False
    fail_count_enabled: bool = False
    fail_count_threshold_not_active: int = 0
    fail_count_threshold_disabled: int = 1


@dataclass(frozen=True)
class TimeoutOutcome:
    """
    What :meth:`NodeList.mark_timeout` did.

    :ivar removed: whether the node was deleted from the list.
    :ivar status: the node's status afterwards (its last status if removed).
    :ivar events: the events of the change.
    """

    removed: bool
    status: NodeStatus
    events: list[Event]
