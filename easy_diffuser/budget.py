"""Tokens left in a prompt chunk, as tags are taken into it in order."""

from __future__ import annotations

from typing import Sequence


class TokenBudget:
    """Tokens left in a prompt chunk; every tag after the first also costs its comma."""

    def __init__(self, tokens: int) -> None:
        self.left = tokens
        self.first = True

    def take(self, cost: int) -> bool:
        cost += 0 if self.first else 1
        if cost > self.left:
            return False
        self.left -= cost
        self.first = False
        return True


def within_budget(ordered: list[int], token_costs: Sequence[int], budget: TokenBudget) -> list[int]:
    """The tags in order that fit; one that doesn't is skipped, so a shorter one after it may still fit."""
    return [index for index in ordered if budget.take(token_costs[index])]
