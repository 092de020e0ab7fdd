/**
 * ipyllm's JupyterLab extension: today's LLM spend in the status bar (from the ipyllm server extension's
 * /ipyllm/api/summary) and the "LLM usage" panel, opened from the status item or the command palette.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Clipboard, ICommandPalette, MainAreaWidget, WidgetTracker } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { DEFAULT_DISPLAY } from './format';
import { UsageModel } from './model';
import { UsagePanel } from './panel';
import { UsageStatus } from './status';

const PLUGIN_ID = 'ipyllm:plugin';
const OPEN = 'ipyllm:open-usage';

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: "Today's LLM spend in the status bar and the LLM usage panel.",
  autoStart: true,
  optional: [ISettingRegistry, IStatusBar, ICommandPalette, INotebookTracker, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    restorer: ILayoutRestorer | null
  ) => {
    const model = new UsageModel();
    const tracker = new WidgetTracker<MainAreaWidget<UsagePanel>>({ namespace: 'ipyllm' });

    const insertCode = async (code: string): Promise<void> => {
      // Also on the clipboard, for a notebook elsewhere (or a console).
      Clipboard.copyToSystem(code);
      let notebook: NotebookPanel | null = notebooks?.currentWidget ?? null;
      if (notebook) {
        NotebookActions.insertBelow(notebook.content);
      } else {
        notebook = (await app.commands.execute('notebook:create-new', { kernelName: 'python3' })) as NotebookPanel;
        await notebook.context.ready;
      }
      app.shell.activateById(notebook.id);
      notebook.content.activeCell?.model.sharedModel.setSource(code);
    };

    app.commands.addCommand(OPEN, {
      label: 'LLM usage',
      caption: 'Spend, calls and budgets from the ipyllm ledger',
      execute: () => {
        let widget = tracker.currentWidget;
        if (!widget || widget.isDisposed) {
          widget = new MainAreaWidget({ content: new UsagePanel(model, insertCode) });
          widget.id = 'ipyllm-usage-panel';
          widget.title.label = 'LLM usage';
          widget.title.closable = true;
          void tracker.add(widget);
        }
        if (!widget.isAttached) {
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(widget.id);
        void model.refresh();
      }
    });
    palette?.addItem({ command: OPEN, category: 'ipyllm' });
    if (restorer) {
      void restorer.restore(tracker, { command: OPEN, name: () => 'ipyllm-usage' });
    }

    if (statusBar) {
      statusBar.registerStatusItem(PLUGIN_ID, {
        item: new UsageStatus(model, () => void app.commands.execute(OPEN)),
        align: 'left',
        rank: 1000
      });
    }

    if (settingRegistry) {
      const apply = (settings: ISettingRegistry.ISettings): void => {
        const get = <T>(name: string, fallback: T): T => (settings.get(name).composite as T) ?? fallback;
        model.intervalSeconds = get('refreshInterval', 1);
        model.display = {
          currency: get('currency', DEFAULT_DISPLAY.currency).toUpperCase(),
          usdRate: get('usdRate', DEFAULT_DISPLAY.usdRate),
          showTeam: get('showTeam', DEFAULT_DISPLAY.showTeam)
        };
      };
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          apply(settings);
          settings.changed.connect(apply);
        })
        .catch(reason => console.error('ipyllm: the settings could not be loaded', reason));
    }
  }
};

export default plugin;
