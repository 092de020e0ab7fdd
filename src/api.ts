/**
 * The JSON the ipyllm server extension serves under /ipyllm/api/ (the issue 21 contract), and the one
 * function that fetches it through Jupyter's own connection settings, so the server's token or login
 * goes with every request.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface Figures {
  cost_usd: number;
  calls: number;
  errors: number;
  refused: number;
}

export interface Budget {
  name: string;
  scope: 'team' | 'everyone' | 'user' | 'session';
  limit_usd: number | null;
  spent_usd: number | null;
  left_usd: number | null;
}

export type Level = 'ok' | 'warn' | 'over';

export interface Summary {
  user: string;
  team: boolean;
  ledger: 'sqlite' | 'postgresql' | 'memory';
  day_start: string;
  today: Figures;
  team_today: Figures | null;
  budgets: Budget[];
  level: Level;
  last_row: string | null;
  version: string;
}

export type GroupBy = 'model' | 'day' | 'hour' | 'notebook' | 'user';

export interface UsageRow {
  key: string | null;
  calls: number;
  input_tokens: number;
  output_tokens: number;
  cost_usd: number | null;
  errors: number;
  mean_latency_s: number | null;
}

export interface Usage {
  by: GroupBy;
  since: string | null;
  until: string | null;
  rows: UsageRow[];
}

export interface Call {
  timestamp: string;
  model: string;
  kind: string;
  status: string;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  cost_usd: number | null;
  latency_s: number | null;
  attempts: number | null;
  notebook: string | null;
  user: string | null;
  session: string | null;
  error: string | null;
}

export interface Calls {
  calls: Call[];
}

/** A request the server refused or could not answer, with its one-line message. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** GET /ipyllm/api/<endpoint>?<query> as JSON. */
export async function requestAPI<T>(
  endpoint: string,
  query: Record<string, string | number> = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const search = Object.entries(query)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`)
    .join('&');
  const url =
    URLExt.join(settings.baseUrl, 'ipyllm', 'api', endpoint) +
    (search ? `?${search}` : '');
  let response: Response;
  try {
    // 'no-cache' (revalidate every time) rather than JupyterLab's default 'no-store', which appends a
    // nameless cache-busting parameter that the endpoints would refuse as unknown.
    response = await ServerConnection.makeRequest(url, { cache: 'no-cache' }, settings);
  } catch (error) {
    throw new ApiError(`the Jupyter server did not answer: ${error}`, 0);
  }
  let data: any = null;
  try {
    data = await response.json();
  } catch {
    // A proxy's HTML error page, or no body: reported below by status.
  }
  if (!response.ok) {
    const message =
      data && typeof data.message === 'string'
        ? data.message
        : response.status === 404
          ? 'the ipyllm server extension is not enabled: run `jupyter server extension enable ipyllm` and restart JupyterLab'
          : `the server answered ${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return data as T;
}
