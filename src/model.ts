/**
 * The one source of freshness for the status item and the panel: a poll of /ipyllm/api/summary.
 *
 * Why poll rather than push: the ledger (a SQLite file or a PostgreSQL database) is where every call of
 * every kernel lands, including kernels this browser never opened, other users' on a team ledger and
 * scripts outside Jupyter. A kernel comm would only see this page's kernels, and a server event stream
 * would itself have to watch the database. The summary is one indexed GROUP BY over today's rows and
 * carries a `version` that changes with every new row, so a poll every second costs one small request,
 * and the heavier panel queries run only when the version moves. The poll stands by while the tab is
 * hidden and backs off after errors.
 */
import { Poll } from '@lumino/polling';
import { ISignal, Signal } from '@lumino/signaling';

import { ApiError, requestAPI, Summary } from './api';
import { DEFAULT_DISPLAY, Display } from './format';

export class UsageModel {
  private _summary: Summary | null = null;
  private _error: string | null = null;
  private _display: Display = DEFAULT_DISPLAY;
  private _changed = new Signal<this, void>(this);
  private _versionChanged = new Signal<this, void>(this);
  private _poll: Poll;

  constructor(intervalSeconds = 1) {
    this._poll = new Poll({
      factory: () => this._fetch(),
      frequency: { interval: intervalSeconds * 1000, backoff: true, max: 60 * 1000 },
      name: 'ipyllm:summary',
      standby: 'when-hidden'
    });
  }

  /** Emitted after every poll that changed what is shown (a new summary or an error). */
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** Emitted when the ledger has new rows (or the settings changed): time to reload the panel's details. */
  get versionChanged(): ISignal<this, void> {
    return this._versionChanged;
  }

  get summary(): Summary | null {
    return this._summary;
  }

  get error(): string | null {
    return this._error;
  }

  get display(): Display {
    return this._display;
  }

  set display(value: Display) {
    this._display = value;
    this._changed.emit();
    this._versionChanged.emit();
  }

  set intervalSeconds(value: number) {
    this._poll.frequency = { ...this._poll.frequency, interval: value * 1000 };
  }

  /** Poll now (after a setting changed, or when the panel opens). */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  dispose(): void {
    this._poll.dispose();
    Signal.clearData(this);
  }

  private async _fetch(): Promise<void> {
    try {
      const summary = await requestAPI<Summary>('summary');
      const moved = this._summary?.version !== summary.version;
      const shown = this._error !== null || moved || JSON.stringify(this._summary) !== JSON.stringify(summary);
      this._summary = summary;
      this._error = null;
      if (shown) {
        this._changed.emit();
      }
      if (moved) {
        this._versionChanged.emit();
      }
    } catch (error) {
      const message = error instanceof ApiError ? error.message : String(error);
      if (message !== this._error) {
        this._error = message;
        this._changed.emit();
      }
      // Rejecting makes the poll back off (up to a minute) until the server answers again.
      throw error;
    }
  }
}
