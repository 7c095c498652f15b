"""PROSE symbolic side: ODE right-hand sides as term lists, prefix (Polish) token sequences and the float encoding.

An expression for du/dt = f(u) (d <= max_dim components) is a list of components; a component is a sum of terms;
a term is (coefficient, monomial) where the monomial is a product tree over `x_i`, `pow2`, `pow3` (or None for a
constant term). Prefix form of one component: `add T1 add T2 T3` (right-nested), a term `mul C M` (or `C` alone), and
components are separated by `|`. Numbers follow the paper/`symbolicregression` float encoding: sign token (`+`/`-`),
mantissa token `N<m>` with `float_precision` significant digits and exponent token `E<e>`, value = sign * m * 10^e.
The lowest exponent token, `E<-max_exponent - float_precision>`, stands for zero (the official encoder writes zero and
underflow as an all-zero mantissa, a token this vocabulary lacks): magnitudes that round below 10^-max_exponent encode
as zero; above the largest representable, (10^p - 1) 10^max_exponent, encoding raises ValueError.
A *skeleton* replaces every number by the placeholder `<c>` (the default text input of the paper).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PAD, BOS, EOS, SEP, CONST = "<pad>", "<bos>", "<eos>", "|", "<c>"
BINARY = ("add", "sub", "mul")
UNARY = ("pow2", "pow3")

Monomial = tuple | str | None  # ("mul", a, b) | ("pow2", a) | "x_0" | None (constant term)
Term = tuple[float, Monomial]
Component = list[Term]
Expression = list[Component]


class SymbolicTokenizer:
    """Vocabulary and prefix encoding; `decode(encode(e)) == round(e)` for every expression e."""

    def __init__(self, max_dim: int = 3, float_precision: int = 3, max_exponent: int = 10) -> None:
        self.max_dim, self.float_precision, self.max_exponent = max_dim, float_precision, max_exponent
        self.variables = [f"x_{i}" for i in range(max_dim)]
        lo, hi = 10 ** (float_precision - 1), 10 ** float_precision
        self.mantissas = [f"N{m}" for m in range(lo, hi)]
        # exponent of the integer mantissa: value = m * 10^e with m in [10^(p-1), 10^p)
        self.exponents = [f"E{e}" for e in range(-max_exponent - float_precision, max_exponent + 1)]
        self.itos = [PAD, BOS, EOS, SEP, CONST, "+", "-", *BINARY, *UNARY, *self.variables, *self.mantissas,
                     *self.exponents]
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id = self.stoi[PAD], self.stoi[BOS], self.stoi[EOS]

    def __len__(self) -> int:
        return len(self.itos)

    # ---- numbers -------------------------------------------------------------------------------------
    def round_float(self, x: float) -> float:
        return self.parse_float(self.float_tokens(x))

    @property
    def zero_exponent(self) -> int:
        """The exponent token that encodes zero (the lowest one)."""
        return -self.max_exponent - self.float_precision

    def float_tokens(self, x: float) -> list[str]:
        if not math.isfinite(x):
            raise ValueError(f"cannot encode the non-finite constant {x}")
        sign = "-" if x < 0 else "+"
        a = abs(float(x))
        p = self.float_precision
        zero = [sign, f"N{10 ** (p - 1)}", f"E{self.zero_exponent}"]
        if a == 0.0:
            return zero
        e = math.floor(math.log10(a)) - (p - 1)
        m = round(a / 10.0 ** e)
        if m >= 10 ** p:  # rounding carried into one more digit
            m //= 10
            e += 1
        if e <= self.zero_exponent:  # underflow: written as zero, as the official encoder does
            return zero
        if e > self.max_exponent:
            raise ValueError(f"constant {x} exceeds the largest encodable magnitude "
                             f"{(10 ** p - 1) * 10.0 ** self.max_exponent:.{p}g}")
        return [sign, f"N{m}", f"E{e}"]

    def parse_float(self, tokens: list[str]) -> float:
        sign, m, e = tokens
        if int(e[1:]) == self.zero_exponent:
            return 0.0
        value = int(m[1:]) * 10.0 ** int(e[1:])
        return float(f"{(-value if sign == '-' else value):.12g}")

    # ---- expressions ---------------------------------------------------------------------------------
    def _monomial_tokens(self, mono: Monomial) -> list[str]:
        if isinstance(mono, str):
            return [mono]
        op, *args = mono
        out = [op]
        for a in args:
            out += self._monomial_tokens(a)
        return out

    def encode_expression(self, expr: Expression, skeleton: bool = False) -> list[str]:
        out: list[str] = []
        for ci, comp in enumerate(expr):
            if ci:
                out.append(SEP)
            for ti, (coef, mono) in enumerate(comp):
                if ti < len(comp) - 1:
                    out.append("add")
                num = [CONST] if skeleton else self.float_tokens(coef)
                out += num if mono is None else ["mul", *num, *self._monomial_tokens(mono)]
        return out

    def encode(self, expr: Expression, skeleton: bool = False, bos_eos: bool = True) -> list[int]:
        toks = self.encode_expression(expr, skeleton)
        if bos_eos:
            toks = [BOS, *toks, EOS]
        return [self.stoi[t] for t in toks]

    def ids_to_tokens(self, ids) -> list[str]:
        """Token strings between an optional leading <bos> and the first <eos>/<pad>."""
        out = []
        for i in ids:
            s = self.itos[int(i)]
            if s == BOS and not out:
                continue
            if s in (EOS, PAD):
                break
            out.append(s)
        return out

    def _parse_number(self, toks: list[str], i: int) -> tuple[float | str, int]:
        if toks[i] == CONST:
            return CONST, i + 1
        if toks[i] in ("+", "-") and i + 2 < len(toks) + 0 and toks[i + 1].startswith("N") \
                and toks[i + 2].startswith("E"):
            return self.parse_float(toks[i:i + 3]), i + 3
        raise ValueError(f"bad number at {i}")

    def _is_number_start(self, tok: str) -> bool:
        return tok in ("+", "-", CONST)

    def _parse_monomial(self, toks: list[str], i: int) -> tuple[Monomial, int]:
        t = toks[i]
        if t in self.variables:
            return t, i + 1
        if t in UNARY:
            a, j = self._parse_monomial(toks, i + 1)
            return (t, a), j
        if t == "mul":
            a, j = self._parse_monomial(toks, i + 1)
            b, k = self._parse_monomial(toks, j)
            return ("mul", a, b), k
        raise ValueError(f"bad monomial token {t!r} at {i}")

    def _parse_term(self, toks: list[str], i: int) -> tuple[Term, int]:
        if self._is_number_start(toks[i]):
            c, j = self._parse_number(toks, i)
            return (c, None), j
        if toks[i] == "mul" and i + 1 < len(toks) and self._is_number_start(toks[i + 1]):
            c, j = self._parse_number(toks, i + 1)
            m, k = self._parse_monomial(toks, j)
            return (c, m), k
        raise ValueError(f"bad term at {i}")

    def _parse_component(self, toks: list[str], i: int) -> tuple[Component, int]:
        terms = []
        while i < len(toks) and toks[i] == "add":
            term, i = self._parse_term(toks, i + 1)
            terms.append(term)
        term, i = self._parse_term(toks, i)
        return terms + [term], i

    def decode_tokens(self, toks: list[str]) -> Expression:
        """Token strings -> expression; raises ValueError (or IndexError) on an invalid prefix sequence."""
        expr, i = [], 0
        try:
            while True:
                comp, i = self._parse_component(toks, i)
                expr.append(comp)
                if i == len(toks):
                    break
                if toks[i] != SEP:
                    raise ValueError(f"expected '|' at {i}")
                i += 1
        except IndexError:
            raise ValueError("truncated expression") from None
        if len(expr) > self.max_dim:
            raise ValueError("too many components")
        return expr

    def decode(self, ids) -> Expression | None:
        """Token ids -> expression, or None when the sequence is not a valid prefix expression."""
        try:
            return self.decode_tokens(self.ids_to_tokens(ids))
        except ValueError:
            return None

    def skeleton(self, expr: Expression) -> tuple:
        return tuple(tuple(m for _, m in comp) for comp in expr)

    def round_expression(self, expr: Expression) -> Expression:
        return [[(self.round_float(c), m) for c, m in comp] for comp in expr]


# ---- evaluation of an expression (the text_ode_solve side) ------------------------------------------------
def eval_monomial(mono: Monomial, u: np.ndarray) -> np.ndarray:
    if mono is None:
        return np.ones(u.shape[:-1])
    if isinstance(mono, str):
        return u[..., int(mono[2:])]
    op, *args = mono
    if op == "pow2":
        return eval_monomial(args[0], u) ** 2
    if op == "pow3":
        return eval_monomial(args[0], u) ** 3
    return eval_monomial(args[0], u) * eval_monomial(args[1], u)


def format_monomial(mono: Monomial) -> str:
    if mono is None:
        return ""
    if isinstance(mono, str):
        return mono
    op, *args = mono
    if op in ("pow2", "pow3"):
        return f"{format_monomial(args[0])}^{op[-1]}"
    return "*".join(format_monomial(a) for a in args)


def format_expression(expr: Expression) -> str:
    """Infix text of a right-hand side, one `dx_i/dt = ...` per component (figure titles)."""
    parts = []
    for i, comp in enumerate(expr):
        terms = " + ".join(f"{c:.3g}" + (f"*{format_monomial(m)}" if m is not None else "") for c, m in comp)
        parts.append(f"dx_{i}/dt = {terms or '0'}".replace("+ -", "- "))
    return "; ".join(parts)


def eval_rhs(expr: Expression, u: np.ndarray) -> np.ndarray:
    """f(u) for u of shape (..., >= len(expr)); returns (..., len(expr))."""
    return np.stack([sum(c * eval_monomial(m, u) for c, m in comp) for comp in expr], axis=-1)


def expression_rel_l2(generated: Expression, true: Expression, points: np.ndarray, eps: float = 1e-6) -> float | None:
    """The PROSE evaluation's symbolic error (official evaluate.py `text_loss`): relative L2 of the generated right-hand
    side against the true one at `points` (official: 50 points uniform in [-5, 5]^d), sqrt(sum (f_gen - f_true)^2 /
    (sum f_true^2 + eps)). None when the generated expression cannot be evaluated there (wrong number of components, a
    variable beyond d, a non-finite value): the official leaves such decodes out of the mean."""
    if len(generated) != len(true):
        return None
    try:
        with np.errstate(all="ignore"):
            gen, ref = eval_rhs(generated, points), eval_rhs(true, points)
    except IndexError:
        return None
    if not np.all(np.isfinite(gen)):
        return None
    return float(np.sqrt(np.sum((gen - ref) ** 2) / (np.sum(ref ** 2) + eps)))


# ---- the offline ODE families -----------------------------------------------------------------------------
X0, X1, X2 = "x_0", "x_1", "x_2"
X0X1, X0X2 = ("mul", X0, X1), ("mul", X0, X2)


@dataclass(frozen=True)
class Family:
    name: str
    dim: int
    nominal: tuple[float, ...]           # parameters
    ic_low: tuple[float, ...]
    ic_high: tuple[float, ...]

    def expression(self, p) -> Expression:
        return FAMILY_RHS[self.name](p)


FAMILY_RHS = {
    # Lotka-Volterra: x0' = a x0 - b x0 x1, x1' = d x0 x1 - c x1
    "lotka_volterra": lambda p: [[(p[0], X0), (-p[1], X0X1)], [(p[3], X0X1), (-p[2], X1)]],
    # Van der Pol: x0' = x1, x1' = mu x1 - mu x0^2 x1 - x0
    "van_der_pol": lambda p: [[(1.0, X1)], [(p[0], X1), (-p[0], ("mul", ("pow2", X0), X1)), (-1.0, X0)]],
    # FitzHugh-Nagumo: v' = v - v^3/3 - w + I, w' = (v + a - b w) / tau
    "fitzhugh_nagumo": lambda p: [[(1.0, X0), (-1.0 / 3.0, ("pow3", X0)), (-1.0, X1), (p[0], None)],
                                  [(1.0 / p[3], X0), (-p[2] / p[3], X1), (p[1] / p[3], None)]],
    # damped Duffing: x0' = x1, x1' = -delta x1 - alpha x0 - beta x0^3
    "duffing": lambda p: [[(1.0, X1)], [(-p[0], X1), (-p[1], X0), (-p[2], ("pow3", X0))]],
    # Lorenz (3D): x0' = s x1 - s x0, x1' = r x0 - x0 x2 - x1, x2' = x0 x1 - b x2
    "lorenz": lambda p: [[(p[0], X1), (-p[0], X0)], [(p[1], X0), (-1.0, X0X2), (-1.0, X1)],
                         [(1.0, X0X1), (-p[2], X2)]],
    # Roessler (3D): x0' = -x1 - x2, x1' = x0 + a x1, x2' = b + x0 x2 - c x2
    "rossler": lambda p: [[(-1.0, X1), (-1.0, X2)], [(1.0, X0), (p[0], X1)], [(p[1], None), (1.0, X0X2),
                                                                              (-p[2], X2)]],
}

FAMILIES = {
    "lotka_volterra": Family("lotka_volterra", 2, (2 / 3, 4 / 3, 1.0, 1.0), (0.5, 0.5), (2.0, 2.0)),
    "van_der_pol": Family("van_der_pol", 2, (1.0,), (-2.0, -2.0), (2.0, 2.0)),
    "fitzhugh_nagumo": Family("fitzhugh_nagumo", 2, (0.5, 0.7, 0.8, 12.5), (-2.0, -1.0), (2.0, 1.5)),
    "duffing": Family("duffing", 2, (0.2, 1.0, 1.0), (-1.5, -1.5), (1.5, 1.5)),
    "lorenz": Family("lorenz", 3, (10.0, 28.0, 8 / 3), (-10.0, -10.0, 10.0), (10.0, 10.0, 30.0)),
    "rossler": Family("rossler", 3, (0.2, 0.2, 5.7), (-5.0, -5.0, 0.0), (5.0, 5.0, 1.0)),
}

# monomials the text corruption may add (terms drawn from the union of the families' terms)
TERM_POOL: tuple[Monomial, ...] = (None, X0, X1, X0X1, ("pow2", X0), ("pow3", X0), ("mul", ("pow2", X0), X1),
                                   X2, X0X2)


def _variables(mono: Monomial) -> set[str]:
    if mono is None:
        return set()
    if isinstance(mono, str):
        return {mono}
    return set().union(*(_variables(a) for a in mono[1:]))


def term_pool(dim: int) -> tuple[Monomial, ...]:
    """Pool terms that only use the variables x_0 .. x_{dim-1} of a dim-dimensional system."""
    allowed = {f"x_{i}" for i in range(dim)}
    return tuple(m for m in TERM_POOL if _variables(m) <= allowed)


def corrupt(expr: Expression, rng: np.random.Generator, p_add: float = 0.15, p_delete: float = 0.15) -> Expression:
    """The card's text corruption of the *input* (`text_corruption=per_term`): each term deleted with p_delete (a
    component keeps >= 1 term), and per component a random pool term added with p_add."""
    out = []
    pool = term_pool(len(expr))
    for comp in expr:
        kept = [t for t in comp if rng.random() >= p_delete] or [comp[int(rng.integers(len(comp)))]]
        if rng.random() < p_add:
            mono = pool[int(rng.integers(len(pool)))]
            kept = kept + [(float(rng.uniform(-1, 1)), mono)]
        out.append(kept)
    return out


def addition_pool(dim: int) -> tuple[Monomial, ...]:
    """The official generator's candidates for an added input term (prose_ode generators.py, one set per dimension):
    a constant, c x_i and c x_i x_j for i <= j (constants become placeholders in the skeleton)."""
    xs = [f"x_{i}" for i in range(dim)]
    quadratic = [("mul", xs[i], xs[j]) for i in range(dim) for j in range(i, dim)]
    return (None, *xs, *quadratic)


def corrupt_one_term(expr: Expression, rng: np.random.Generator, p_add: float = 0.15,
                     p_delete: float = 0.15) -> Expression:
    """Official text corruption (prose_ode environment.py / generators.py `get_skeleton_tree`): one mode per sample,
    none with 1 - p_add - p_delete, add one term with p_add, delete one term with p_delete. Adding puts a term of
    `addition_pool` at a position drawn uniformly over every (component, slot) pair; deleting removes a term drawn
    uniformly among the components that have at least two."""
    if p_add + p_delete > 1.0:
        raise ValueError(f"p_add + p_delete must be <= 1 for one corruption per sample, got {p_add} + {p_delete}")
    mode = rng.choice(3, p=[1.0 - p_add - p_delete, p_add, p_delete])
    out = [list(comp) for comp in expr]
    if mode == 1:
        pool = addition_pool(len(expr))
        mono = pool[int(rng.integers(len(pool)))]
        slots = [(i, j) for i, comp in enumerate(out) for j in range(len(comp) + 1)]
        i, j = slots[int(rng.integers(len(slots)))]
        out[i].insert(j, (float(rng.uniform(-1, 1)), mono))
    elif mode == 2:
        terms = [(i, j) for i, comp in enumerate(out) if len(comp) >= 2 for j in range(len(comp))]
        if terms:
            i, j = terms[int(rng.integers(len(terms)))]
            del out[i][j]
    return out


def random_expression(rng: np.random.Generator, max_dim: int = 3, max_terms: int = 4) -> Expression:
    """Random expression with constants spanning many magnitudes (tokeniser round trip check)."""
    expr = []
    for _ in range(int(rng.integers(1, max_dim + 1))):
        comp = []
        for _ in range(int(rng.integers(1, max_terms + 1))):
            c = float(rng.choice([-1, 1]) * 10 ** rng.uniform(-4, 4))
            mono = TERM_POOL[int(rng.integers(len(TERM_POOL)))]
            if mono is not None and rng.random() < 0.3 and max_dim >= 3:
                mono = ("mul", mono, "x_2")
            comp.append((c, mono))
        expr.append(comp)
    return expr
