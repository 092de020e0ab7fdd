/**
 * Small bar charts and tables as plain SVG and DOM: the panel shows at most 31 bars and a few dozen rows,
 * which needs no chart library (and keeps the prebuilt extension small).
 */
const SVG = 'http://www.w3.org/2000/svg';

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function svg(tag: string, attrs: Record<string, string | number>): SVGElement {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

export interface Bar {
  label: string;
  value: number;
  /** The tooltip: the bar's label and value in words. */
  title: string;
}

/** A bar chart scaled to its tallest bar, labelled under every `labelEvery`-th bar. */
export function barChart(bars: Bar[], caption: string, labelEvery = 1): SVGElement {
  const width = 600;
  const height = 120;
  const bottom = 16;
  const slot = width / Math.max(bars.length, 1);
  const top = Math.max(...bars.map(b => b.value), 0);
  const chart = svg('svg', {
    class: 'ipyllm-chart',
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-label': caption,
    preserveAspectRatio: 'none'
  });
  chart.appendChild(svg('line', { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: 'ipyllm-axis' }));
  bars.forEach((bar, i) => {
    const h = top > 0 ? ((height - bottom - 4) * bar.value) / top : 0;
    const rect = svg('rect', {
      x: i * slot + slot * 0.15,
      y: height - bottom - h,
      width: slot * 0.7,
      height: Math.max(h, bar.value > 0 ? 1 : 0),
      class: 'ipyllm-bar'
    });
    const title = svg('title', {});
    title.textContent = bar.title;
    rect.appendChild(title);
    chart.appendChild(rect);
    if (i % labelEvery === 0) {
      const text = svg('text', { x: i * slot + slot / 2, y: height - 3, class: 'ipyllm-tick' });
      text.textContent = bar.label;
      chart.appendChild(text);
    }
  });
  return chart;
}

export type Cell = string | number | Node;

/** A table with a header row; numbers right-aligned by the `ipyllm-num` class on their columns. */
export function table(head: string[], rows: Cell[][], numeric: boolean[], empty: string): HTMLElement {
  if (rows.length === 0) {
    return el('p', { class: 'ipyllm-empty' }, empty);
  }
  const cls = (i: number): Record<string, string> => (numeric[i] ? { class: 'ipyllm-num' } : {});
  return el(
    'table',
    { class: 'ipyllm-table' },
    el('thead', {}, el('tr', {}, ...head.map((h, i) => el('th', cls(i), h)))),
    el(
      'tbody',
      {},
      ...rows.map(row => el('tr', {}, ...row.map((c, i) => el('td', cls(i), typeof c === 'number' ? String(c) : c))))
    )
  );
}
