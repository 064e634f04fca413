"""The funding-quality report (TKB90 and TWP90, POJK 10/POJK.05/2022), as of any date.

Over the loans that had started by D and still had something outstanding at
the end of D, by days past due as of D: CURRENT (0), SPECIAL_MENTION (1-30),
SUBSTANDARD (31-60), DOUBTFUL (61-90), LOSS (over 90), each with its number
of loans and outstanding amount (total minus payments valued on or before D).
``twp90 = 100 * outstanding(LOSS) / outstanding(all)`` rounded half up to two
places, and ``tkb90 = 100 - twp90``, so the two published figures always add
up to 100.00.

One aggregate query does it. A loan whose latest value date is on or before
D is judged by its row; one paid since is judged by its running total at D,
one index lookup in its payments (value order). For today that second part
is empty.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_UP, Decimal

from lending_grpc.core.storage.database import LendingDatabase
from lending_grpc.core.views import FUNDING_QUALITIES, PortfolioReportView, QualityView

# dpd: days past due as of :d. A loan's first unpaid installment is number
# paid + 1, due start_date + 7 * (paid + 1); paid = the installments its
# paid amount covers (fewer than term_weeks: it still owes something).
_CATEGORY = """
CASE WHEN dpd <= 0 THEN 0 WHEN dpd <= 30 THEN 1 WHEN dpd <= 60 THEN 2 WHEN dpd <= 90 THEN 3 ELSE 4 END
"""
_SQLITE = f"""
SELECT {_CATEGORY} AS quality, COUNT(*), SUM(total_cents - paid)
FROM (
  SELECT total_cents, paid,
         CAST(julianday(:d) - julianday(start_date) AS INTEGER)
           - 7 * (MIN(term_weeks - 1, paid / weekly_cents) + 1) AS dpd
  FROM (
    SELECT l.total_cents, l.start_date, l.term_weeks, l.weekly_cents, l.paid_cents AS paid
    FROM loan l
    WHERE l.start_date <= :d AND (l.last_value_date IS NULL OR l.last_value_date <= :d) {{owner}}
    UNION ALL
    SELECT l.total_cents, l.start_date, l.term_weeks, l.weekly_cents,
           COALESCE((SELECT p.running_paid_cents FROM payment p
                     WHERE p.loan_id = l.id AND p.reverse_time_us IS NULL AND p.value_date <= :d
                     ORDER BY p.value_date DESC, p.id DESC LIMIT 1), 0)
    FROM loan l
    WHERE l.start_date <= :d AND l.last_value_date > :d {{owner}}
  ) WHERE paid < total_cents
) GROUP BY quality
"""
_POSTGRESQL = f"""
SELECT {_CATEGORY} AS quality, COUNT(*), SUM(total_cents - paid)
FROM (
  SELECT total_cents, paid,
         (%(d)s::date - start_date) - 7 * (LEAST(term_weeks - 1, paid / weekly_cents) + 1) AS dpd
  FROM (
    SELECT l.total_cents, l.start_date, l.term_weeks, l.weekly_cents, l.paid_cents AS paid
    FROM loan l
    WHERE l.start_date <= %(d)s AND (l.last_value_date IS NULL OR l.last_value_date <= %(d)s) {{owner}}
    UNION ALL
    SELECT l.total_cents, l.start_date, l.term_weeks, l.weekly_cents, COALESCE(p.running_paid_cents, 0)
    FROM loan l
    LEFT JOIN LATERAL (
      SELECT running_paid_cents FROM payment
      WHERE loan_id = l.id AND reverse_time_us IS NULL AND value_date <= %(d)s
      ORDER BY value_date DESC, id DESC LIMIT 1
    ) p ON TRUE
    WHERE l.start_date <= %(d)s AND l.last_value_date > %(d)s {{owner}}
  ) AS at_d WHERE paid < total_cents
) AS judged GROUP BY quality
"""
_HUNDRED = Decimal(100)
_CENT = Decimal("0.01")


def percentage(part: int, whole: int) -> Decimal:
    """100 * part / whole, rounded half up to two places (0.00 when whole is 0)."""
    if whole == 0:
        return Decimal("0.00")
    return (_HUNDRED * part / whole).quantize(_CENT, rounding=ROUND_HALF_UP)


def portfolio_report(db: LendingDatabase, day: dt.date, owner: int | None) -> PortfolioReportView:
    """The report as of ``day`` over one owner's loans, or the whole book when ``owner`` is None."""
    if db.kind == "sqlite":
        sql = _SQLITE.format(owner="" if owner is None else "AND l.owner_id = :owner")
        params: dict = {"d": day.isoformat(), "owner": owner}
    else:
        sql = _POSTGRESQL.format(owner="" if owner is None else "AND l.owner_id = %(owner)s")
        params = {"d": day, "owner": owner}
    counts = {quality: (0, 0) for quality in range(len(FUNDING_QUALITIES))}
    for quality, loans, cents in db.execute_sql(sql, params).fetchall():
        counts[int(quality)] = (int(loans), int(cents))
    categories = [QualityView(name, *counts[index]) for index, name in enumerate(FUNDING_QUALITIES)]
    loans = sum(c.loans for c in categories)
    outstanding = sum(c.outstanding_cents for c in categories)
    twp90 = percentage(categories[-1].outstanding_cents, outstanding)
    return PortfolioReportView(
        as_of=day,
        loans=loans,
        outstanding_cents=outstanding,
        categories=categories,
        twp90=f"{twp90:.2f}",
        tkb90=f"{_HUNDRED - twp90:.2f}",
    )
