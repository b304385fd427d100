"""Synthetic TheLook-style input batches for demos, tests and the benchmark.

The generator has two jobs that pull in different directions: the benchmark wants millions of rows
fast and in constant memory, the tests want every rule of docs/semantics.md exercised. So rows are
produced in one streaming pass with a single seeded ``random.Random`` (deterministic per seed), cheap
integer arithmetic for prices and timestamps, and ``csv.writer``; dirt (invalid rows, CSV quirks) is
injected only when ``invalid_fraction > 0`` so a clean batch is also a clean benchmark input.

Shape of the data (what the KPI engine should find):
- ~20 categories, a skewed product popularity, prices with 2 decimals, names with commas and quotes;
- ~2.2 items per order, a repeat-customer distribution, TheLook statuses (items of a returned order are
  mostly ``Returned``), timestamps naive, with ``Z``, with ``+HH:MM`` offsets or with fractions;
- ``quantity`` present in the odd-numbered ``order_items`` files only (absent means 1).

Dirt when ``invalid_fraction > 0`` (every kind of rule break cycles so each appears when there are enough
rows): non-int ids, missing required values, later duplicates, unparseable and impossible datetimes,
exponent/NaN/inf decimals, zero/negative prices, bad quantities, items naming a nonexistent or invalid
order/product (cascade), a UTF-8 BOM, CRLF line ends, shuffled columns, an extra column, a header-only
file, a file lacking a required column, and one row with non-UTF-8 bytes.

Later batches (``batches > 1``) look like corrections: their own catalog snapshot (a few categories
changed, a few new products), new orders, and re-sent orders of earlier batches (moved to another date,
turned ``Returned``, progressed, or identical) with a subset of their items (some re-priced). Re-sent
items only ever reference orders re-sent valid in the same batch, because referential integrity is per
batch.
"""

from __future__ import annotations

import csv
import random
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import IO, Any

import click

PRODUCT_COLUMNS = ["id", "sku", "cost", "category", "name", "brand", "retail_price", "department"]
ORDER_COLUMNS = [
    "order_id", "user_id", "status", "created_at", "returned_at", "shipped_at", "delivered_at", "num_of_item",
]
ITEM_COLUMNS = [
    "id", "order_id", "user_id", "product_id", "status", "created_at", "shipped_at", "delivered_at",
    "returned_at", "sale_price",
]
ITEM_COLUMNS_WITH_QUANTITY = [*ITEM_COLUMNS, "quantity"]

CATEGORIES = [
    "Accessories", "Active", "Blazers & Jackets", "Dresses", "Fashion Hoodies & Sweatshirts", "Intimates",
    "Jeans", "Jumpsuits & Rompers", "Leggings", "Outerwear & Coats", "Pants", "Plus", "Shorts", "Skirts",
    "Sleep & Lounge", "Socks & Hosiery", "Suits & Sport Coats", "Sweaters", "Swim", "Tops & Tees",
]
BRANDS = [
    "Levi's", "Calvin Klein", "Carhartt", "Columbia", "Hanes", "Nike", "Allegra K", "Quiksilver",
    "Tommy Hilfiger", "Champion", "Dockers", "Wrangler", "Volcom", "Speedo", "Ray-Ban", "Fruit of the Loom",
]
ADJECTIVES = ["Classic", "Slim Fit", "Relaxed", "Vintage", "Essential", "Premium", "Stretch", "Heritage"]
COLOURS = ["Black", "Navy", "Heather Grey", "Dark Stonewash", "Olive", "Burgundy", "White", "Khaki"]

_OFFSETS_MIN = [120, -300, 330, -180, 60, 540, -420, 0]

_PRODUCT_KINDS = ["id_alpha", "id_float", "id_missing", "category_missing", "price_zero", "price_negative",
                  "price_exponent", "price_nan", "price_inf", "price_missing", "duplicate"]
_ORDER_KINDS = ["id_float", "id_alpha", "id_exponent", "id_missing", "user_missing", "user_alpha",
                "created_missing", "created_garbage", "created_impossible", "duplicate"]
_ITEM_KINDS = ["id_float", "id_alpha", "id_missing", "order_missing", "product_missing", "product_float",
               "order_float", "price_exponent", "price_nan", "price_inf", "price_missing", "price_zero",
               "price_negative", "quantity_zero", "quantity_negative", "quantity_float", "order_unknown",
               "product_unknown", "product_invalid", "duplicate"]
_QUANTITY_KINDS = {"quantity_zero", "quantity_negative", "quantity_float"}
_GARBAGE_DATES = ["yesterday", "2025-03-0x 10:00:00", "03/04/2025 10:00:00", "2025-03-04 10:00:00 UTC",
                  "2025-03-04T10"]
_IMPOSSIBLE_DATES = ["2025-13-45 10:00:00", "2025-02-30T12:00:00", "2025-03-01 25:61:00",
                     "2025-04-31 08:00:00"]
_DECOY_ID_BASE = 900_000_000


@dataclass
class _Catalog:
    """The product catalog as parallel lists: 40k products as objects would dominate a small heap."""

    ids: list[int] = field(default_factory=list)
    id_text: list[str] = field(default_factory=list)
    skus: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    brands: list[str] = field(default_factory=list)
    departments: list[str] = field(default_factory=list)
    cents: list[int] = field(default_factory=list)
    price_text: list[str] = field(default_factory=list)


@dataclass
class _Resend:
    """An order kept for re-sending in the next batch, with its items (id, product id, cents, quantity)."""

    order_id: int
    user_id: int
    status: str
    created: int
    style: int
    items: list[tuple[int, int, int, int]]


class _Clock:
    """Formats second offsets from ``start`` midnight UTC as ISO strings without datetime objects.

    ``datetime.strftime`` per field would cost more than everything else in the generator together, so
    day strings and times of day are precomputed lookup tables.
    """

    def __init__(self, start: date, days: int) -> None:
        self.low = -10
        first = start + timedelta(days=self.low)
        self.days = [(first + timedelta(days=i)).isoformat() for i in range(days + 60)]
        self.tod = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)]
        self.offsets = [
            ("+" if m >= 0 else "-") + f"{abs(m) // 60:02d}:{abs(m) % 60:02d}" for m in _OFFSETS_MIN
        ]

    def fmt(self, ts: int, style: int) -> str:
        """Style 0 naive with a space, 1 ``T..Z``, 2..9 an offset (same instant), 10 naive ``T`` + fraction."""
        if style == 0:
            d, s = divmod(ts, 86400)
            return f"{self.days[d - self.low]} {self.tod[s]}"
        if style == 1:
            d, s = divmod(ts, 86400)
            return f"{self.days[d - self.low]}T{self.tod[s]}Z"
        if style == 10:
            d, s = divmod(ts, 86400)
            return f"{self.days[d - self.low]}T{self.tod[s]}.{(ts * 7919) % 1000000:06d}"
        k = style - 2
        d, s = divmod(ts + _OFFSETS_MIN[k] * 60, 86400)
        return f"{self.days[d - self.low]} {self.tod[s]}{self.offsets[k]}"


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _pick_style(r: float) -> int:
    if r < 0.70:
        return 0
    if r < 0.82:
        return 1
    if r < 0.94:
        return 2 + int((r - 0.82) / 0.12 * len(_OFFSETS_MIN)) % len(_OFFSETS_MIN)
    return 10


def _new_product(cat: _Catalog, rng: random.Random, pid: int) -> None:
    category = CATEGORIES[int(rng.random() * len(CATEGORIES))]
    brand = BRANDS[int(rng.random() * len(BRANDS))]
    adj = ADJECTIVES[int(rng.random() * len(ADJECTIVES))]
    r = rng.random()
    if r < 0.25:
        name = f'{brand} "{adj}" {category}, {COLOURS[int(rng.random() * len(COLOURS))]}'
    elif r < 0.5:
        name = f"{brand} {adj} {category}, {COLOURS[int(rng.random() * len(COLOURS))]}"
    else:
        name = f"{brand} {adj} {category}"
    cents = int(499 + rng.random() ** 2.5 * 29_500)
    cat.ids.append(pid)
    cat.id_text.append(str(pid))
    cat.skus.append(f"{rng.getrandbits(128):032X}")
    cat.categories.append(category)
    cat.names.append(name)
    cat.brands.append(brand)
    cat.departments.append("Women" if rng.random() < 0.55 else "Men")
    cat.cents.append(cents)
    cat.price_text.append(_money(cents))


def _product_row(cat: _Catalog, i: int) -> list[str]:
    cents = cat.cents[i]
    return [str(cat.ids[i]), cat.skus[i], _money(cents * 45 // 100), cat.categories[i], cat.names[i],
            cat.brands[i], cat.price_text[i], cat.departments[i]]


class _Cycle:
    """Hands out rule-break kinds in turn so even a few hundred rows cover every kind."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = list(kinds)
        self.i = 0

    def next(self, skip: Callable[[str], bool] = lambda _k: False) -> str:
        """The next kind that applies here; a kind that does not apply is deferred, not lost."""
        n = len(self.kinds)
        for off in range(n):
            at = (self.i + off) % n
            kind = self.kinds[at]
            if not skip(kind):
                here = self.i % n
                self.kinds[here], self.kinds[at] = self.kinds[at], self.kinds[here]
                self.i += 1
                return kind
        raise RuntimeError("no applicable kind")


class _FileSet:
    """The open CSV files of one dataset with their per-file quirks (column order, extra column)."""

    def __init__(self, stack: ExitStack, paths: list[Path], headers: list[list[str]],
                 perms: list[list[int] | None], extras: list[str | None], boms: list[bool],
                 crlfs: list[bool]) -> None:
        self.files: list[IO[str]] = []
        self.writers: list[Any] = []
        self.perms = perms
        self.extras = extras
        for path, header, perm, extra, bom, crlf in zip(paths, headers, perms, extras, boms, crlfs,
                                                        strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            # surrogateescape lets the one deliberately non-UTF-8 row through as raw bytes.
            f = stack.enter_context(open(  # noqa: SIM115 - closed by the caller's ExitStack
                path, "w", encoding="utf-8-sig" if bom else "utf-8", errors="surrogateescape", newline=""))
            w = csv.writer(f, lineterminator="\r\n" if crlf else "\n")
            cols = [header[j] for j in perm] if perm else list(header)
            if extra:
                cols.append(extra)
            w.writerow(cols)
            self.files.append(f)
            self.writers.append(w)
        self.fast = [w.writerow if perm is None and extra is None else None
                     for w, perm, extra in zip(self.writers, perms, extras, strict=True)]

    def write(self, j: int, row: list[str]) -> None:
        fast = self.fast[j]
        if fast is not None:
            fast(row)
            return
        perm = self.perms[j]
        out = [row[k] for k in perm] if perm else row
        if self.extras[j]:
            out = [*out, "web" if len(row[0]) % 2 else "app"]
        self.writers[j].writerow(out)


def generate_batches(
    out: Path,
    orders: int,
    *,
    batches: int = 1,
    invalid_fraction: float = 0.0,
    seed: int = 0,
    files_per_dataset: int = 3,
    products: int | None = None,
    start: date = date(2025, 3, 1),
    days: int = 30,
) -> list[Path]:
    """Write ``out/batch-1`` .. ``out/batch-N``; each batch has ``orders`` new orders (plus re-sent ones).

    Deterministic for a seed. Memory stays flat in ``orders`` for a single batch; with several batches
    only the ~5% of orders picked for re-sending are kept. ``invalid_fraction`` is the approximate share
    of rejected rows per dataset; each kind of rule break appears at least once when a dataset has a few
    dozen invalid rows, and the CSV quirks (BOM, CRLF, shuffled and extra columns, header-only file,
    missing required column, non-UTF-8 row) are added only in that dirty mode.
    """
    if orders < 1 or batches < 1 or files_per_dataset < 1 or days < 1:
        raise ValueError("orders, batches, files_per_dataset and days must be >= 1")
    if not 0.0 <= invalid_fraction < 0.5:
        raise ValueError("invalid_fraction must be in [0, 0.5)")
    out = Path(out)
    rng = random.Random(seed)
    clock = _Clock(start, days)
    n_products = products if products is not None else max(50, orders // 40)
    cat = _Catalog()
    for pid in range(1, n_products + 1):
        _new_product(cat, rng, pid)
    state = {"next_order": 1, "next_item": 1, "next_product": n_products + 1}
    n_users = max(10, int(orders * 0.55))
    resend: list[_Resend] = []
    written: list[Path] = []
    for b in range(1, batches + 1):
        batch_dir = out / f"batch-{b}"
        if b > 1:
            _evolve_catalog(cat, rng, state)
        resend = _write_batch(
            batch_dir, rng, clock, cat, state, orders=orders, n_users=n_users, days=days,
            invalid_fraction=invalid_fraction, files=files_per_dataset, resend_in=resend,
            keep_for_resend=b < batches,
        )
        written.append(batch_dir)
    return written


def _evolve_catalog(cat: _Catalog, rng: random.Random, state: dict[str, int]) -> None:
    """A later snapshot: ~3% of products change category (re-sent items pick that up), ~1% are new."""
    for i in range(len(cat.ids)):
        if rng.random() < 0.03:
            cat.categories[i] = CATEGORIES[int(rng.random() * len(CATEGORIES))]
    for _ in range(max(1, len(cat.ids) // 100)):
        _new_product(cat, rng, state["next_product"])
        state["next_product"] += 1


def _write_batch(
    batch_dir: Path,
    rng: random.Random,
    clock: _Clock,
    cat: _Catalog,
    state: dict[str, int],
    *,
    orders: int,
    n_users: int,
    days: int,
    invalid_fraction: float,
    files: int,
    resend_in: list[_Resend],
    keep_for_resend: bool,
) -> list[_Resend]:
    """Write one batch in a single pass; return the orders picked for re-sending in the next batch.

    Rows go straight to their files as they are made (nothing per row is kept except the few re-send
    picks and the last valid row of each file, the source of the "later duplicate" rows), which is what
    keeps memory flat at millions of rows.
    """
    dirty = invalid_fraction > 0
    f = invalid_fraction
    rand = rng.random
    fmt = clock.fmt
    n_cat = len(cat.ids)
    window = days * 86400
    resend_out: list[_Resend] = []

    with ExitStack() as stack:
        # ---- products.csv: the catalog, with decoy (invalid) rows interleaved in dirty mode.
        decoy_ids: list[int] = []
        prod_path = batch_dir / "products.csv"
        prod_path.parent.mkdir(parents=True, exist_ok=True)
        with open(prod_path, "w", encoding="utf-8-sig" if dirty else "utf-8", newline="") as pf:
            pw = csv.writer(pf, lineterminator="\n")
            pw.writerow(PRODUCT_COLUMNS)
            n_decoys = max(len(_PRODUCT_KINDS), round(f * n_cat)) if dirty else 0
            every = max(1, n_cat // max(1, n_decoys))
            kinds = _Cycle(_PRODUCT_KINDS)
            for i in range(n_cat):
                pw.writerow(_product_row(cat, i))
                if dirty and i % every == every - 1 and kinds.i < n_decoys:
                    row, did = _bad_product(kinds.next(), cat, rng, i, state)
                    pw.writerow(row)
                    if did is not None:
                        decoy_ids.append(did)
            while dirty and kinds.i < n_decoys:
                row, did = _bad_product(kinds.next(), cat, rng, n_cat - 1, state)
                pw.writerow(row)
                if did is not None:
                    decoy_ids.append(did)

        # ---- orders/ and order_items/: per-file quirks only in dirty mode.
        ord_paths = [batch_dir / "orders" / f"part-{j + 1:04d}.csv" for j in range(files)]
        item_paths = [batch_dir / "order_items" / f"part-{j + 1:04d}.csv" for j in range(files)]
        has_qty = [j % 2 == 0 for j in range(files)]
        item_headers = [ITEM_COLUMNS_WITH_QUANTITY if q else ITEM_COLUMNS for q in has_qty]
        ord_perm: list[list[int] | None] = [None] * files
        item_perm: list[list[int] | None] = [None] * files
        ord_extra: list[str | None] = [None] * files
        item_extra: list[str | None] = [None] * files
        ord_bom = [False] * files
        item_bom = [False] * files
        ord_crlf = [False] * files
        item_crlf = [False] * files
        if dirty:
            ord_extra[0] = "channel"
            ord_crlf[min(1, files - 1)] = True
            ord_perm[files - 1] = list(reversed(range(len(ORDER_COLUMNS))))
            ord_bom[files - 1] = True
            qperm = list(range(len(item_headers[min(1, files - 1)])))
            random.Random(len(qperm)).shuffle(qperm)
            item_perm[min(1, files - 1)] = qperm
            item_extra[files - 1] = "_ingest_ts"
            item_bom[0] = True
            item_crlf[files - 1] = True
        ofs = _FileSet(stack, ord_paths, [ORDER_COLUMNS] * files, ord_perm, ord_extra, ord_bom, ord_crlf)
        ifs = _FileSet(stack, item_paths, item_headers, item_perm, item_extra, item_bom, item_crlf)
        owrite = ofs.write
        iwrite = ifs.write

        order_kinds = _Cycle(_ORDER_KINDS)
        item_kinds = _Cycle(_ITEM_KINDS)
        # Invalid orders carry one (cascade-rejected) item, so items need a lower own-invalid rate for the
        # item dataset to end up near ``f`` too.
        item_f = f * 0.55
        last_order: list[list[str] | None] = [None] * files
        last_item: list[list[str] | None] = [None] * files
        bad_utf8_pending = dirty

        # Re-sent orders first, spread over the files; their items are re-sent only partly.
        for r, old in enumerate(resend_in):
            j = r % files
            created, status = old.created, old.status
            roll = rand()
            item_returned = False
            if roll < 0.35:  # corrected created_at: moves the order (and all its items) to another date
                shift = (1 + int(rand() * 3)) * 86400 * (1 if rand() < 0.5 else -1) + int(rand() * 7200)
                created = min(max(0, created + shift), window - 1)
            elif roll < 0.60:
                status, item_returned = "Returned", True
            elif roll < 0.80:
                status = {"Processing": "Shipped", "Shipped": "Complete"}.get(status, status)
            times = _times(old.order_id, status, created, old.style, fmt)
            owrite(j, _order_row(old.order_id, old.user_id, status, times, len(old.items)))
            soid, suid = str(old.order_id), str(old.user_id)
            for iid, pid_idx, cents, qty in old.items:
                if rand() >= 0.5:
                    continue
                if rand() < 0.3:
                    cents = max(1, cents * 9 // 10)
                ist = "Returned" if item_returned and rand() < 0.8 else status
                jj = j if has_qty[j] or qty == 1 else 0
                row = _item_row(iid, soid, suid, cat.id_text[pid_idx], ist, times, _money(cents))
                if has_qty[jj]:
                    row.append(str(qty))
                iwrite(jj, row)
            if keep_for_resend and rand() < 0.3:
                resend_out.append(_Resend(old.order_id, old.user_id, status, created, old.style, old.items))

        for n in range(orders):
            j = n * files // orders
            oid = state["next_order"]
            state["next_order"] += 1
            r = rand()
            uid = 1 + int(n_users * r * r * r) if rand() < 0.6 else 1 + int(n_users * rand())
            r = rand()
            status = ("Shipped" if r < 0.30 else "Complete" if r < 0.55 else "Processing" if r < 0.75
                      else "Cancelled" if r < 0.90 else "Returned")
            created = int(rand() * window)
            style = _pick_style(rand())
            r = rand()
            n_items = 1 if r < 0.35 else 2 if r < 0.63 else 3 if r < 0.83 else 4  # mean 2.19

            order_bad = dirty and rand() < f
            if order_bad:
                kind = order_kinds.next(lambda k, j=j: k == "duplicate" and last_order[j] is None)
                if kind == "duplicate":
                    dup = list(last_order[j])  # type: ignore[arg-type]
                    dup[2] = "Cancelled" if dup[2] != "Cancelled" else "Complete"
                    owrite(j, dup)
                    order_bad = False  # the duplicate is an extra row; this order stays valid
                else:
                    n_items = 1
                    owrite(j, _bad_order(kind, oid, uid, status, created, style, fmt))
            times = _times(oid, status, created, style, fmt)
            soid, suid = str(oid), str(uid)
            if not order_bad:
                orow = _order_row(oid, uid, status, times, n_items)
                owrite(j, orow)
                last_order[j] = orow

            items_kept: list[tuple[int, int, int, int]] = []
            for _ in range(n_items):
                iid = state["next_item"]
                state["next_item"] += 1
                r = rand()
                pidx = int(n_cat * r * r)
                cents = cat.cents[pidx]
                price = cat.price_text[pidx]
                if rand() < 0.12:
                    cents = max(1, cents * 4 // 5)
                    price = _money(cents)
                ist = ("Returned" if rand() < 0.8 else "Complete") if status == "Returned" else status
                qty = 1
                if has_qty[j]:
                    r = rand()
                    qty = 1 if r < 0.85 else (2 if r < 0.95 else 3)
                row = _item_row(iid, soid, suid, cat.id_text[pidx], ist, times, price)
                if has_qty[j]:
                    row.append(str(qty))
                if bad_utf8_pending and n >= 2 and not order_bad:
                    row[4] = "Compl\udce9te"  # a lone 0xE9 byte: Latin-1 leaking into a UTF-8 file
                    bad_utf8_pending = False
                    iwrite(j, row)
                    continue
                if dirty and not order_bad and rand() < item_f:
                    kind = item_kinds.next(
                        lambda k, j=j: (k in _QUANTITY_KINDS and not has_qty[j])
                        or (k == "duplicate" and last_item[j] is None)
                        or (k == "product_invalid" and not decoy_ids)
                    )
                    if kind == "duplicate":
                        dup = list(last_item[j])  # type: ignore[arg-type]
                        dup[9] = _money(cents + 100)
                        iwrite(j, dup)  # extra row; the item itself is written valid below
                    else:
                        iwrite(j, _bad_item(kind, row, rng, decoy_ids))
                        continue
                iwrite(j, row)
                if not order_bad:
                    last_item[j] = row
                    items_kept.append((iid, pidx, cents, qty))
            if keep_for_resend and not order_bad and items_kept and rand() < 0.05:
                resend_out.append(_Resend(oid, uid, status, created, style, items_kept))

        if dirty:
            _write_extra_files(batch_dir, files, last_order, state, fmt)
    return resend_out


def _times(oid: int, status: str, created: int, style: int,
           fmt: Callable[[int, int], str]) -> tuple[str, str, str, str]:
    """(created, shipped, delivered, returned) of an order, formatted once and shared by its items.

    Offsets derive from the order id rather than the RNG so timestamps cost no random draws.
    """
    shipped = delivered = returned = ""
    if status in ("Shipped", "Complete", "Returned"):
        shipped = fmt(created + 3600 + (oid * 7919) % 172800, style)
        if status != "Shipped":
            delivered = fmt(created + 180000 + (oid * 104729) % 259200, style)
            if status == "Returned":
                returned = fmt(created + 500000 + (oid * 15485863) % 604800, style)
    return fmt(created, style), shipped, delivered, returned


def _order_row(oid: int, uid: int, status: str, times: tuple[str, str, str, str], n_items: int) -> list[str]:
    created, shipped, delivered, returned = times
    return [str(oid), str(uid), status, created, returned, shipped, delivered, str(n_items)]


def _item_row(iid: int, oid: str, uid: str, pid: str, status: str, times: tuple[str, str, str, str],
              price: str) -> list[str]:
    created, shipped, delivered, returned = times
    return [str(iid), oid, uid, pid, status, created, shipped, delivered,
            returned if status == "Returned" else "", price]


def _bad_product(kind: str, cat: _Catalog, rng: random.Random, i: int,
                 state: dict[str, int]) -> tuple[list[str], int | None]:
    """A decoy product row; returns its int id when items could name it (cascade), else None."""
    row = _product_row(cat, i)
    did = _DECOY_ID_BASE + state.setdefault("next_decoy", 0)
    state["next_decoy"] += 1
    row[0] = str(did)
    int_id: int | None = did
    if kind == "id_alpha":
        row[0], int_id = f"x{did}", None
    elif kind == "id_float":
        row[0], int_id = f"{did}.0", None
    elif kind == "id_missing":
        row[0], int_id = "", None
    elif kind == "category_missing":
        row[3] = " "
    elif kind == "price_zero":
        row[6] = "0.00"
    elif kind == "price_negative":
        row[6] = f"-{row[6]}"
    elif kind == "price_exponent":
        row[6] = "1.5e2"
    elif kind == "price_nan":
        row[6] = "NaN"
    elif kind == "price_inf":
        row[6] = "inf" if rng.random() < 0.5 else "-Infinity"
    elif kind == "price_missing":
        row[6] = ""
    elif kind == "duplicate":
        row = _product_row(cat, i)  # same id as a row already written: the later one is rejected
        row[3] = CATEGORIES[(CATEGORIES.index(row[3]) + 1) % len(CATEGORIES)]
        int_id = None
    return row, int_id


def _bad_order(kind: str, oid: int, uid: int, status: str, created: int, style: int,
               fmt: Callable[[int, int], str]) -> list[str]:
    row = _order_row(oid, uid, status, _times(oid, status, created, style, fmt), 1)
    if kind == "id_float":
        row[0] = f"{oid}.0"
    elif kind == "id_alpha":
        row[0] = f"x{oid}"
    elif kind == "id_exponent":
        row[0] = f"{oid}e0"
    elif kind == "id_missing":
        row[0] = ""
    elif kind == "user_missing":
        row[1] = ""
    elif kind == "user_alpha":
        row[1] = f"u{uid}"
    elif kind == "created_missing":
        row[3] = "  "
    elif kind == "created_garbage":
        row[3] = _GARBAGE_DATES[oid % len(_GARBAGE_DATES)]
    elif kind == "created_impossible":
        row[3] = _IMPOSSIBLE_DATES[oid % len(_IMPOSSIBLE_DATES)]
    return row


def _bad_item(kind: str, row: list[str], rng: random.Random, decoy_ids: list[int]) -> list[str]:
    row = list(row)
    if kind == "id_float":
        row[0] = f"{row[0]}.0"
    elif kind == "id_alpha":
        row[0] = f"x{row[0]}"
    elif kind == "id_missing":
        row[0] = ""
    elif kind == "order_missing":
        row[1] = ""
    elif kind == "product_missing":
        row[3] = ""
    elif kind == "product_float":
        row[3] = f"{row[3]}.0"
    elif kind == "order_float":
        row[1] = f"{int(row[1]) / 1:.1f}"
    elif kind == "price_exponent":
        row[9] = "1e3"
    elif kind == "price_nan":
        row[9] = "NaN" if rng.random() < 0.5 else "nan"
    elif kind == "price_inf":
        row[9] = "inf" if rng.random() < 0.5 else "-Infinity"
    elif kind == "price_missing":
        row[9] = ""
    elif kind == "price_zero":
        row[9] = "0"
    elif kind == "price_negative":
        row[9] = f"-{row[9]}"
    elif kind == "quantity_zero":
        row[10] = "0"
    elif kind == "quantity_negative":
        row[10] = "-1"
    elif kind == "quantity_float":
        row[10] = "1.5" if rng.random() < 0.5 else "two"
    elif kind == "order_unknown":
        row[1] = str(800_000_000 + int(row[0]))
    elif kind == "product_unknown":
        row[3] = str(700_000_000 + int(row[0]))
    elif kind == "product_invalid":
        row[3] = str(decoy_ids[int(rng.random() * len(decoy_ids))])
    return row


def _write_extra_files(batch_dir: Path, files: int, last_order: list[list[str] | None],
                       state: dict[str, int], fmt: Callable[[int, int], str]) -> None:
    """A header-only orders file and an items file lacking the required ``sale_price`` column."""
    with open(batch_dir / "orders" / f"part-{files + 1:04d}.csv", "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerow(ORDER_COLUMNS)
    cols = [c for c in ITEM_COLUMNS if c != "sale_price"]
    with open(batch_dir / "order_items" / f"part-{files + 1:04d}.csv", "w", encoding="utf-8",
              newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        ref = next((o for o in last_order if o is not None), None)
        for _ in range(5):
            iid = state["next_item"]
            state["next_item"] += 1
            oid, uid = (ref[0], ref[1]) if ref else ("1", "1")
            w.writerow([str(iid), oid, uid, "1", "Complete", fmt(0, 0), "", "", ""])


@click.command("generate")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--orders", type=click.IntRange(min=1), required=True, help="New orders per batch.")
@click.option("--batches", type=click.IntRange(min=1), default=1, show_default=True,
              help="Batches to write; later ones re-send and correct earlier orders.")
@click.option("--invalid-fraction", type=click.FloatRange(0.0, 0.5, max_open=True), default=0.0,
              show_default=True, help="Approximate share of invalid rows (also turns on CSV quirks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--files-per-dataset", type=click.IntRange(min=1), default=3, show_default=True,
              help="CSV files under orders/ and order_items/.")
def generate_command(out: Path, orders: int, batches: int, invalid_fraction: float, seed: int,
                     files_per_dataset: int) -> None:
    """Write synthetic TheLook-style batches OUT/batch-1 .. OUT/batch-N."""
    t0 = time.perf_counter()
    dirs = generate_batches(out, orders, batches=batches, invalid_fraction=invalid_fraction, seed=seed,
                            files_per_dataset=files_per_dataset)
    secs = time.perf_counter() - t0
    total = 0
    for d in dirs:
        click.echo(f"{d}/")
        for p in sorted(d.rglob("*.csv")):
            size = p.stat().st_size
            total += size
            click.echo(f"  {p.relative_to(d)}  {size:,} bytes")
    click.echo(f"wrote {len(dirs)} batch(es), {total / 1e6:.1f} MB in {secs:.1f} s")
