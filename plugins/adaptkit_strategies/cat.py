"""``cat``: concatenate the factors — exact, rank ``Σ r_i``.

``B = [w_1 s_1 B_1 … w_N s_N B_N]``, ``A = [A_1; …; A_N]`` so ``B A = Σ w_i s_i B_i A_i``
exactly, with scale 1 (``alpha = rank``). The factors are the inputs' own, so nothing is
re-factorised; use ``linear --rank k`` for a smaller rank. The class lives in core
(:class:`adaptkit.combine.Concatenate`) because exporters need the exact sum even when this
plugin is blocked; this plugin registers it.
"""

from adaptkit.api.strategy import Concatenate as Cat

__all__ = ["Cat"]
