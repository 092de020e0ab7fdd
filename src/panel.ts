/**
 * The "LLM usage" main-area panel: budgets and what is left, spend per hour today and per day this
 * month, tables by model, by notebook and (on a team ledger) by user, and the latest calls. Each table
 * has a button that puts the `ipyllm.usage(...)` code for the same view into a new notebook cell.
 *
 * It reloads its details only when the summary's version moves (a new ledger row) or the window changes.
 */
import { Widget } from '@lumino/widgets';

import { Call, Calls, GroupBy, requestAPI, Summary, Usage, UsageRow } from './api';
import { Bar, barChart, Cell, el, table } from './charts';
import {
  budgetTitle,
  count,
  Display,
  integer,
  levelClass,
  money,
  seconds,
  statusText,
  usageCode,
  when,
  windowStart
} from './format';
import { UsageModel } from './model';

type Window = 'today' | 'month';

interface Details {
  hour: Usage;
  day: Usage;
  model: Usage;
  notebook: Usage;
  user: Usage | null;
  calls: Call[];
}

const LABELS: Record<string, string> = { model: 'Model', notebook: 'Notebook', user: 'User' };

export class UsagePanel extends Widget {
  private _window: Window = 'today';
  private _loads = 0;
  /** Whether the last load asked for the by-user table (team ledger, team figures shown). */
  private _loadedTeam = false;
  private _details: Details | null = null;
  private _detailsError: string | null = null;
  private _head = el('div', { class: 'ipyllm-Panel-head' });
  private _body = el('div', { class: 'ipyllm-Panel-body' });

  constructor(
    private _model: UsageModel,
    private _insertCode: (code: string) => Promise<void>
  ) {
    super();
    this.id = 'ipyllm-usage';
    this.title.label = 'LLM usage';
    this.title.closable = true;
    this.addClass('ipyllm-Panel');
    this.node.append(this._head, this._body);
    _model.changed.connect(this._renderHead, this);
    _model.versionChanged.connect(this._load, this);
    this._renderHead();
    void this._load();
  }

  dispose(): void {
    this._model.changed.disconnect(this._renderHead, this);
    this._model.versionChanged.disconnect(this._load, this);
    super.dispose();
  }

  private get _display(): Display {
    return this._model.display;
  }

  private _renderHead(): void {
    const { summary, error } = this._model;
    const choose = (value: Window, label: string) => {
      const button = el('button', { class: 'jp-Button ipyllm-window', 'aria-pressed': String(this._window === value) }, label);
      button.addEventListener('click', () => {
        this._window = value;
        this._renderHead();
        void this._load();
      });
      return button;
    };
    const line = summary
      ? el('span', { class: `ipyllm-Panel-status ${levelClass(summary.level)}` }, statusText(summary, this._display))
      : el('span', { class: 'ipyllm-Panel-status' }, error ? '' : 'loading…');
    const about = summary
      ? `${summary.user} · ${summary.ledger} ledger${summary.last_row ? ` · last call ${when(summary.last_row)}` : ' · no calls yet'}`
      : '';
    this._head.replaceChildren(
      el('h2', {}, 'LLM usage'),
      line,
      el('div', { class: 'ipyllm-Panel-about' }, about),
      el('div', { class: 'ipyllm-Panel-window' }, 'Tables: ', choose('today', 'Today'), choose('month', 'This month')),
      ...(error ? [el('p', { class: 'ipyllm-error' }, error)] : [])
    );
    if (summary) {
      this._renderBody();
      if (this._team !== this._loadedTeam) {
        // The first summary (or the setting) says there is a team: load its table now, not at the next row.
        void this._load();
      }
    }
  }

  private get _team(): boolean {
    return Boolean(this._model.summary?.team_today) && this._display.showTeam;
  }

  private async _load(): Promise<void> {
    const load = ++this._loads;
    const since = this._window;
    const team = this._team;
    this._loadedTeam = team;
    const usage = (by: GroupBy, window: Window) => requestAPI<Usage>('usage', { by, since: window });
    try {
      const [hour, day, model, notebook, user, calls] = await Promise.all([
        usage('hour', 'today'),
        usage('day', 'month'),
        usage('model', since),
        usage('notebook', since),
        team ? usage('user', since) : Promise.resolve(null),
        requestAPI<Calls>('calls', { limit: 50 })
      ]);
      if (load !== this._loads) {
        return; // a newer load started meanwhile
      }
      this._details = { hour, day, model, notebook, user, calls: calls.calls };
      this._detailsError = null;
    } catch (error) {
      if (load !== this._loads) {
        return;
      }
      this._detailsError = error instanceof Error ? error.message : String(error);
    }
    this._renderBody();
  }

  private _renderBody(): void {
    const summary = this._model.summary;
    const sections: Node[] = [];
    if (this._detailsError) {
      sections.push(el('p', { class: 'ipyllm-error' }, this._detailsError));
    }
    if (summary) {
      sections.push(this._budgets(summary));
    }
    const d = this._details;
    if (d && summary) {
      sections.push(
        section('Spend per hour today', barChart(hourBars(d.hour.rows, this._display), 'Spend per hour today', 3)),
        section('Spend per day this month', barChart(dayBars(d.day.rows, summary, this._display), 'Spend per day this month', 3))
      );
      const since = windowStart(summary, this._window);
      const windowLabel = this._window === 'today' ? 'today' : 'this month';
      const groups: [GroupBy, Usage | null][] = [
        ['model', d.model],
        ['notebook', d.notebook],
        ['user', d.user]
      ];
      for (const [by, usage] of groups) {
        if (usage) {
          sections.push(this._grouped(by, usage, since, windowLabel));
        }
      }
      sections.push(section('Latest calls', this._calls(d.calls)));
    }
    this._body.replaceChildren(...sections);
  }

  private _budgets(summary: Summary): HTMLElement {
    const rows: Cell[][] = summary.budgets
      .filter(b => b.limit_usd !== null)
      .map(b => {
        const used = b.limit_usd && b.spent_usd !== null ? b.spent_usd / b.limit_usd : 0;
        const level = used >= 1 ? 'ipyllm-over' : used >= 0.8 ? 'ipyllm-warn' : 'ipyllm-ok';
        const meter = el('span', { class: `ipyllm-meter ${level}` }, el('span', { style: `width: ${(Math.min(used, 1) * 100).toFixed(1)}%` }));
        return [
          budgetTitle(b),
          b.scope,
          money(b.limit_usd, this._display),
          b.spent_usd === null ? 'per kernel' : money(b.spent_usd, this._display, true),
          b.left_usd === null ? '—' : b.left_usd < 0 ? `over by ${money(-b.left_usd, this._display, true)}` : money(b.left_usd, this._display, true),
          meter
        ];
      });
    return section(
      'Budgets',
      table(['Budget', 'Applies to', 'Limit', 'Spent today', 'Left', ''], rows, [false, false, true, true, true, false], 'No budget is set (LLM_DAILY_BUDGET_USD, LLM_USER_DAILY_BUDGET_USD, LLM_BUDGET_USD).')
    );
  }

  private _grouped(by: GroupBy, usage: Usage, since: string, windowLabel: string): HTMLElement {
    const rows: Cell[][] = usage.rows.map(r => [
      by === 'notebook' ? notebookName(r.key) : (r.key ?? '(none)'),
      integer(r.calls),
      integer(r.input_tokens),
      integer(r.output_tokens),
      money(r.cost_usd, this._display, true),
      integer(r.errors),
      seconds(r.mean_latency_s)
    ]);
    const button = el('button', { class: 'jp-Button ipyllm-code', title: 'Insert the ipyllm.usage() code for this table into a new notebook cell' }, 'Insert as code');
    button.addEventListener('click', () => void this._insertCode(usageCode(by, since)));
    return section(
      `By ${by} ${windowLabel}`,
      table([LABELS[by], 'Calls', 'Input tokens', 'Output tokens', 'Cost', 'Errors', 'Mean latency'], rows, [false, true, true, true, true, true, true], `No calls ${windowLabel}.`),
      button,
      `ipyllm-by-${by}`
    );
  }

  private _calls(calls: Call[]): HTMLElement {
    const rows: Cell[][] = calls.map(c => [
      when(c.timestamp),
      c.model,
      el('span', { class: `ipyllm-status-${c.status}`, title: c.error ?? '' }, c.status),
      `${integer(c.prompt_tokens)} / ${integer(c.completion_tokens)}`,
      money(c.cost_usd, this._display, true),
      seconds(c.latency_s),
      notebookName(c.notebook, ''),
      c.user ?? ''
    ]);
    return table(['Time', 'Model', 'Status', 'Tokens in / out', 'Cost', 'Latency', 'Notebook', 'User'], rows, [false, false, false, true, true, true, false, false], 'No calls in the ledger yet.');
  }
}

/** A notebook by its file name (kernels record the full path), the path on hover. */
function notebookName(path: string | null, none = '(none)'): Cell {
  if (!path) {
    return none;
  }
  return el('span', { title: path }, path.split(/[\\/]/).pop() || path);
}

function section(title: string, content: Node, extra?: Node, cls?: string): HTMLElement {
  const head = el('div', { class: 'ipyllm-section-head' }, el('h3', {}, title), ...(extra ? [extra] : []));
  return el('section', { class: `ipyllm-section ${cls ?? ''}`.trim() }, head, content);
}

function barTitle(label: string, row: UsageRow | undefined, display: Display): string {
  return row ? `${label}: ${money(row.cost_usd, display, true)}, ${count(row.calls, 'call')}` : `${label}: no calls`;
}

/** 24 bars, one per hour of the server's day; keys such as "2026-12-04T10:00:00+01:00", "2026-12-04 10" or "10". */
export function hourBars(rows: UsageRow[], display: Display): Bar[] {
  const byHour = new Map<number, UsageRow>();
  for (const row of rows) {
    const match = /(?:T|\s|^)(\d{1,2})(?::|$)/.exec(row.key ?? '');
    if (match) {
      byHour.set(Number(match[1]), row);
    }
  }
  return Array.from({ length: 24 }, (_, h) => {
    const row = byHour.get(h);
    const label = String(h).padStart(2, '0');
    return { label, value: (row?.cost_usd ?? 0) * display.usdRate, title: barTitle(`${label}:00`, row, display) };
  });
}

/** One bar per day of the month `day_start` is in; keys "YYYY-MM-DD…". */
export function dayBars(rows: UsageRow[], summary: Summary, display: Display): Bar[] {
  const [year, month] = summary.day_start.slice(0, 7).split('-').map(Number);
  const days = new Date(year, month, 0).getDate();
  const byDay = new Map<number, UsageRow>();
  for (const row of rows) {
    const match = /^\d{4}-\d{2}-(\d{2})/.exec(row.key ?? '');
    if (match) {
      byDay.set(Number(match[1]), row);
    }
  }
  return Array.from({ length: days }, (_, i) => {
    const row = byDay.get(i + 1);
    const label = String(i + 1);
    return { label, value: (row?.cost_usd ?? 0) * display.usdRate, title: barTitle(`${summary.day_start.slice(0, 8)}${label.padStart(2, '0')}`, row, display) };
  });
}
