/**
 * What the status bar and the panel say, as pure functions of the server's JSON and the settings, so the
 * words are decided in one place: amounts in the chosen currency, the status line, its colour class, and
 * the `ipyllm.usage(...)` code that reproduces a view of the panel in a notebook.
 */
import { Budget, Summary } from './api';

export interface Display {
  /** ISO 4217 code amounts are shown in. */
  currency: string;
  /** Units of `currency` per US dollar (the ledger stores US dollars). */
  usdRate: number;
  showTeam: boolean;
}

export const DEFAULT_DISPLAY: Display = {
  currency: 'USD',
  usdRate: 1,
  showTeam: true
};

const formatters = new Map<string, Intl.NumberFormat>();

function formatter(currency: string, digits: number): Intl.NumberFormat {
  const key = `${currency}/${digits}`;
  let found = formatters.get(key);
  if (!found) {
    try {
      found = new Intl.NumberFormat(undefined, {
        style: 'currency',
        currency,
        minimumFractionDigits: digits,
        maximumFractionDigits: digits
      });
    } catch {
      // A code Intl does not know: fall back to dollars rather than show nothing.
      found = formatter('USD', digits);
    }
    formatters.set(key, found);
  }
  return found;
}

/**
 * An amount of US dollars in the display currency: two decimals, or four below one cent so a single
 * cheap call does not read as nothing; "—" where the cost is unknown (never a made-up 0).
 */
export function money(usd: number | null | undefined, display: Display, precise = false): string {
  if (usd === null || usd === undefined || !isFinite(usd)) {
    return '—';
  }
  const amount = usd * display.usdRate;
  const digits = precise && amount !== 0 && Math.abs(amount) < 0.01 ? 4 : 2;
  return formatter(display.currency, digits).format(amount);
}

export function count(n: number, one: string, many = `${one}s`): string {
  return `${n.toLocaleString()} ${n === 1 ? one : many}`;
}

/** The daily budget the user's own spend is measured against: the user's, else (alone on a ledger) everyone's. */
export function userBudget(summary: Summary): Budget | undefined {
  const daily = summary.budgets.filter(b => b.limit_usd !== null && b.scope !== 'session');
  return (
    daily.find(b => b.scope === 'user') ??
    (summary.team ? undefined : daily.find(b => b.name === 'daily_budget_usd'))
  );
}

/** The team's daily budget, on a team ledger. */
export function teamBudget(summary: Summary): Budget | undefined {
  return summary.budgets.find(
    b => b.name === 'daily_budget_usd' && b.limit_usd !== null && b.scope !== 'user'
  );
}

/** `LLM today $0.42 of $5.00 · 37 calls`, and ` · team $3.10 of $20.00 · 210 calls` on a team ledger. */
export function statusText(summary: Summary, display: Display): string {
  const mine = userBudget(summary);
  let text = `LLM today ${money(summary.today.cost_usd, display)}`;
  if (mine) {
    text += ` of ${money(mine.limit_usd, display)}`;
  }
  text += ` · ${count(summary.today.calls, 'call')}`;
  if (summary.team_today && display.showTeam) {
    const team = teamBudget(summary);
    text += ` · team ${money(summary.team_today.cost_usd, display)}`;
    if (team) {
      text += ` of ${money(team.limit_usd, display)}`;
    }
    text += ` · ${count(summary.team_today.calls, 'call')}`;
  }
  return text;
}

const BUDGET_TITLES: Record<string, string> = {
  daily_budget_usd: 'daily budget',
  user_daily_budget_usd: 'your daily budget',
  budget_usd: 'session budget'
};

export function budgetTitle(budget: Budget): string {
  return BUDGET_TITLES[budget.name] ?? budget.name;
}

/** The status item's tooltip: what the line leaves out. */
export function statusTooltip(summary: Summary, display: Display): string {
  const lines = [
    `${summary.user} today: ${money(summary.today.cost_usd, display)}, ${count(summary.today.calls, 'call')}, ` +
      `${count(summary.today.errors, 'error')}, ${summary.today.refused} refused by a budget`
  ];
  if (summary.team_today) {
    const t = summary.team_today;
    lines.push(
      `team today: ${money(t.cost_usd, display)}, ${count(t.calls, 'call')}, ${count(t.errors, 'error')}, ${t.refused} refused`
    );
  }
  for (const b of summary.budgets) {
    if (b.limit_usd === null) {
      continue;
    }
    const left = b.left_usd === null ? 'per kernel session' : `${money(b.left_usd, display)} left`;
    lines.push(`${budgetTitle(b)} ${money(b.limit_usd, display)}: ${left}`);
  }
  if (summary.level === 'over') {
    lines.push('A budget is spent or has refused a call today.');
  } else if (summary.level === 'warn') {
    lines.push('80 % or more of the tightest daily budget is spent.');
  }
  lines.push(`${summary.ledger} ledger · click for the LLM usage panel`);
  return lines.join('\n');
}

/** The CSS class of a level: amber at 80 % of the tightest daily budget, red once a budget refused a call. */
export function levelClass(level: string): string {
  return level === 'over' ? 'ipyllm-over' : level === 'warn' ? 'ipyllm-warn' : 'ipyllm-ok';
}

/** The first day of the window, as the date in the server's day (`day_start` carries its offset). */
export function windowStart(summary: Summary | null, window: 'today' | 'month'): string {
  const day = summary ? summary.day_start.slice(0, 10) : new Date().toISOString().slice(0, 10);
  return window === 'today' ? day : `${day.slice(0, 8)}01`;
}

const GROUP_COLUMNS: Record<string, string> = {
  model: 'model',
  notebook: 'notebook',
  user: 'user'
};

/**
 * Python that reproduces a table of the panel: the ledger's rows (every session) since the window's
 * first day, chosen in the database (`since=`, `columns=`), grouped by the same key, with the panel's columns.
 */
export function usageCode(by: string, since: string): string {
  const column = GROUP_COLUMNS[by] ?? by;
  return [
    'import ipyllm',
    '',
    `# LLM usage by ${by} since ${since}, as the JupyterLab panel shows it`,
    `usage = ipyllm.usage(`,
    `    all_sessions=True,`,
    `    since="${since}",`,
    `    columns=["${column}", "status", "prompt_tokens", "completion_tokens", "cost_usd", "latency_s"],`,
    `)`,
    `usage.groupby("${column}", dropna=False).agg(`,
    `    calls=("status", "size"),`,
    `    input_tokens=("prompt_tokens", "sum"),`,
    `    output_tokens=("completion_tokens", "sum"),`,
    `    cost_usd=("cost_usd", "sum"),`,
    `    errors=("status", lambda s: (s == "error").sum()),`,
    `    mean_latency_s=("latency_s", "mean"),`,
    `).sort_values("cost_usd", ascending=False)`
  ].join('\n');
}

/** A timestamp as the browser's local time of day, or date and time when not today. */
export function when(iso: string): string {
  const t = new Date(iso);
  if (isNaN(t.getTime())) {
    return iso;
  }
  const today = new Date().toDateString() === t.toDateString();
  return today ? t.toLocaleTimeString() : t.toLocaleString();
}

export function seconds(s: number | null): string {
  return s === null || s === undefined ? '—' : `${s.toFixed(s < 10 ? 2 : 1)} s`;
}

export function integer(n: number | null | undefined): string {
  return n === null || n === undefined ? '—' : n.toLocaleString();
}
