/**
 * The status bar item: today's spend, the budget it counts against and the calls, coloured by the
 * summary's level; a click opens the LLM usage panel.
 */
import { Widget } from '@lumino/widgets';

import { levelClass, statusText, statusTooltip } from './format';
import { UsageModel } from './model';

const LEVELS = ['ipyllm-ok', 'ipyllm-warn', 'ipyllm-over', 'ipyllm-unavailable'];

export class UsageStatus extends Widget {
  private _text: HTMLSpanElement;

  constructor(
    private _model: UsageModel,
    private _open: () => void
  ) {
    super();
    this.addClass('ipyllm-StatusItem');
    this.addClass('jp-mod-highlighted');
    this.node.setAttribute('role', 'button');
    this.node.tabIndex = 0;
    this._text = document.createElement('span');
    this._text.className = 'ipyllm-StatusItem-text';
    this._text.textContent = 'LLM today …';
    this.node.appendChild(this._text);
    this.node.addEventListener('click', () => this._open());
    this.node.addEventListener('keydown', event => {
      if (event.key === 'Enter' || event.key === ' ') {
        this._open();
      }
    });
    _model.changed.connect(this._update, this);
  }

  dispose(): void {
    this._model.changed.disconnect(this._update, this);
    super.dispose();
  }

  private _update(): void {
    const { summary, error, display } = this._model;
    let level = 'ipyllm-unavailable';
    if (error !== null) {
      this._text.textContent = 'LLM today ?';
      this.node.title = `ipyllm: ${error}`;
    } else if (summary) {
      this._text.textContent = statusText(summary, display);
      this.node.title = statusTooltip(summary, display);
      level = levelClass(summary.level);
    }
    this.node.classList.remove(...LEVELS);
    this.node.classList.add(level);
    this.node.dataset.level = summary && error === null ? summary.level : 'unavailable';
  }
}
