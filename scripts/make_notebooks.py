"""Write the source notebooks under notebooks/ (no outputs, one cell tagged `parameters`).

The notebooks are committed; this script documents how they were made and rewrites them
identically. Run: python scripts/make_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = "import logging\n\nlogging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')"
OUT = 'output_root: str = "runs/explore"  # reports/<profile> under DVC'
EXPLORE = (
    "# Parameters: DVC passes these from params.yaml with papermill -p. The defaults below run the\n"
    "# smoke profile into a scratch folder, so the notebook also runs as it is in JupyterLab.\n"
)

CROSS_RUN = (
    "# Parameters: DVC passes these from params.yaml with papermill -p. The defaults below read the\n"
    "# pipeline's results (`dvc repro`; the report's inputs are committed) and write a scratch copy,\n"
    "# so the notebook also runs as it is in JupyterLab without touching reports/.\n"
    'params_file: str = "params.yaml"  # relative to the project root\n'
    'input_root: str = ""  # where the per-run stages wrote their outputs; "": reports/<the active profile>\n'
    'output_root: str = "runs/explore"  # reports/<profile> under DVC'
)

# Training notebooks: papermill stores every refresh of a progress bar as a separate output (100 epochs of
# CIFAR-10 made an 8.7 MB executed notebook), so dvc.yaml turns the bars off.
PROGRESS = "progress: bool = True  # per-step progress bars; dvc.yaml passes False (the log has one line per epoch)"

NOTEBOOKS = {
    "10_train.ipynb": [
        new_markdown_cell("# Train one named run\n\nTrains the run named `run` in the params file "
                          "(`runs.<run>` over the `train` defaults) and writes its checkpoint, data split, "
                          "metrics and learning curve under `output_root` (see `robustlib.pipeline.paths`). An "
                          "interrupted run resumes from its last completed epoch."),
        new_code_cell(EXPLORE + 'run: str = "standard"  # a run name; to explore, run train, attack, verify in order\n'
                      'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + "\n" + PROGRESS, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import train as stage"),
        new_code_cell("metrics = stage.run(run, params_file, output_root, progress)\n"
                      "pd.Series(metrics, name=run).to_frame()"),
        new_code_cell("from pathlib import Path\n\nfrom robustlib.pipeline import paths\n"
                      "from robustlib.pipeline.params import project_root\n"
                      "from robustlib.reporting.plots import learning_curves_figure\n\n"
                      "out = project_root() / output_root\n"
                      "curve = pd.read_csv(paths.train_curve_path(out, run))\n"
                      "learning_curves_figure({run: curve}, ['train_loss', 'val_acc']);"),
    ],
    "15_lpips.ipynb": [
        new_markdown_cell("# Train the LPIPS network\n\nTrains the fixed LPIPS network of the NPTM attacks (LPA, "
                          "PPGD): perceptual-advex's `alexnet_cifar` architecture (Laidlaw et al. 2021) on the "
                          "dataset's training split, the same network for every attacked run (`lpips` params)."),
        new_code_cell(EXPLORE + 'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + "\n" + PROGRESS, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import lpips as stage"),
        new_code_cell("metrics = stage.run(params_file, output_root, progress)\n"
                      "pd.Series(metrics, name='lpips').to_frame()"),
    ],
    "12_sweep_train.ipynb": [
        new_markdown_cell("# Train one sweep cell\n\nTrains the weight-sweep cell named `cell` (`sweep_cells.<cell>`: "
                          "its base run's training with the sweep's Hamming/stability weights and reading of eq. 17, "
                          "`robustlib.pipeline.sweeps`), with the per-epoch probe diagnostics and the collapse stop; "
                          "an interrupted cell resumes from its last completed epoch."),
        new_code_cell(EXPLORE + 'cell: str = "smoke_h10_s0p0025"  # a cell name of sweep_cells\n'
                      'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + "\n" + PROGRESS, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import sweep as stage"),
        new_code_cell("metrics = stage.train_cell(cell, params_file, output_root, progress)\n"
                      "pd.Series(metrics, name=cell).to_frame()"),
    ],
    "20_attack.ipynb": [
        new_markdown_cell("# Attack one named run\n\nFGSM, PGD (L-inf, L2), AutoAttack (with its checks), a transfer "
                          "attack and the perceptual attacks on the run's test examples; per-example worst case, "
                          "robustness curves, and the sanity checks of Carlini et al. (2019), which fail the stage."),
        new_code_cell(EXPLORE + 'run: str = "standard"  # a run name; to explore, run train, attack, verify in order\n'
                      'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + '; the train notebook must have run there',
                      metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import attack as stage"),
        new_code_cell("metrics = stage.run(run, params_file, output_root)\n"
                      "pd.Series({k: v for k, v in metrics.items() if k.endswith('_acc')}, name=run).to_frame()"),
        new_code_cell("from robustlib.evaluation.schema import load_curve\nfrom robustlib.pipeline import paths\n"
                      "from robustlib.pipeline.params import project_root\n"
                      "from robustlib.reporting.curves import robustness_curves_figure\n\n"
                      "robustness_curves_figure({run: load_curve(paths.attack_curve_path("
                      "project_root() / output_root, run))});"),
    ],
    "30_verify.ipynb": [
        new_markdown_cell("# Verify one named run\n\nIBP certified accuracy (and Lipschitz certificates for "
                          "spectral-norm runs) for every run; complete MILP verification for the runs in "
                          "`verify.milp_runs`. A time limit is never 'verified'; a counterexample counts only "
                          "after a float32 replay."),
        new_code_cell(EXPLORE + 'run: str = "standard"  # a run name; to explore, run train, attack, verify in order\n'
                      'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + '; train and attack must have run there',
                      metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import verify as stage"),
        new_code_cell("metrics = stage.run(run, params_file, output_root)\npd.DataFrame(metrics['eps']).T"),
    ],
    "25_sweep_eval.ipynb": [
        new_markdown_cell("# Evaluate one sweep cell\n\nClean and PGD accuracy (the paper's PGD: 20 steps x 10 "
                          "restarts, step 2.5 eps / 20) of the cell's model on the validation images the sweep "
                          "selects on, and on test examples when the sweep asks (`sweeps.<sweep>.eval`)."),
        new_code_cell(EXPLORE + 'cell: str = "smoke_h10_s0p0025"  # a cell name of sweep_cells\n'
                      'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + '; the sweep-train notebook must have run there', metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import sweep as stage"),
        new_code_cell("result = stage.eval_cell(cell, params_file, output_root)\n"
                      "pd.DataFrame({k: result[k] for k in ('val', 'test') if k in result}).T"),
    ],
    "40_ablations.ipynb": [
        new_markdown_cell("# Ablations (paper Table 3) and regularization-strength sweep"),
        new_code_cell(CROSS_RUN, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nfrom IPython.display import Image, display\n\n"
                      "from robustlib.stages import ablations as stage"),
        new_code_cell("result = stage.run(params_file, output_root, input_root)\nresult['table']"),
        new_code_cell("display(result['sweep'])\ndisplay(Image(filename=str(result['figure'])))"),
    ],
    "45_sweep_select.ipynb": [
        new_markdown_cell("# Select the best cell of a weight sweep\n\nThe cell with the best validation PGD accuracy "
                          "among those that trained and did not collapse (ties: clean accuracy, then the earlier "
                          "cell), the check that the other readings of eq. 17 were tried at the best grid cell, and "
                          "AutoAttack on the selected cell when the sweep asks."),
        new_code_cell(EXPLORE + 'sweep: str = "smoke"  # a sweep name of sweeps\n'
                      'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + '; its cells must have been trained and evaluated there',
                      metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nimport pandas as pd\n\nfrom robustlib.stages import sweep_select as stage"),
        new_code_cell("selection = stage.select(sweep, params_file, output_root)\n"
                      "print('selected:', selection['selected'])\npd.DataFrame(selection['cells'])"),
    ],
    "46_sweep_report.ipynb": [
        new_markdown_cell("# Weight sweep: figures, table and the check of the seeded runs\n\nThe accuracy heatmap "
                          "over (gamma_H, gamma_S) with the paper's point and the reference runs, the probe "
                          "diagnostics of every cell (collapsed beside surviving), and the check that the profile's "
                          "seeded runs carry the selected weights and reading."),
        new_code_cell(CROSS_RUN + '\nsweep: str = "smoke"  # a sweep name of sweeps',
                      metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nfrom IPython.display import Image, display\n\n"
                      "from robustlib.stages import sweep_select as stage"),
        new_code_cell("result = stage.report(sweep, params_file, output_root, input_root)\nresult['table']"),
        new_code_cell("for f in result['figures']:\n    display(Image(filename=str(f)))"),
    ],
    "50_laplacian.ipynb": [
        new_markdown_cell("# Sparse vs dense Laplacian (paper Table 4) and appendix-B neighbour statistics"),
        new_code_cell(CROSS_RUN, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nfrom IPython.display import Image, display\n\n"
                      "from robustlib.stages import laplacian as stage"),
        new_code_cell("result = stage.run(params_file, output_root, input_root)\n"
                      "display(result['table'])\nresult['stats']"),
        new_code_cell("display(Image(filename=str(result['figure'])))"),
    ],
    "60_gallery.ipynb": [
        new_markdown_cell("# Adversarial-example gallery\n\nThe first `gallery.n` test images of the attack stage's "
                          "evaluation order for each run of `gallery.runs`, clean and under each attack of the "
                          "paper's Table 1 that the `attack` params configure (the attack stage's suite, seed and "
                          "LPIPS network), with each prediction and the perturbation x_adv - x."),
        new_code_cell(EXPLORE + 'params_file: str = "profiles/smoke.yaml"  # relative to the project root\n'
                      + OUT + '; the train and lpips notebooks must have run there',
                      metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nfrom IPython.display import Image, display\n\n"
                      "from robustlib.stages import gallery as stage"),
        new_code_cell("result = stage.run(params_file, output_root)\nresult['seconds']"),
        new_code_cell("display(Image(filename=str(result['figure'])))\nresult['table']"),
    ],
    "90_report.ipynb": [
        new_markdown_cell("# Report\n\nCollects the outputs of every stage into the tables and figures under "
                          "`reports/<profile>/` and writes `reports/<profile>/report.md`."),
        new_code_cell(CROSS_RUN, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP + "\n\nfrom IPython.display import Markdown, display\n\n"
                      "from robustlib.stages import report as stage"),
        new_code_cell("result = stage.run(params_file, output_root, input_root)\nresult['table1']"),
        new_code_cell("display(Markdown(result['report'].read_text()))"),
    ],
}


def main() -> None:
    folder = Path(__file__).resolve().parent.parent / "notebooks"
    folder.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        })
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{Path(name).stem}-{i}"
        nbformat.write(nb, folder / name)
        print("wrote", folder / name)


if __name__ == "__main__":
    main()
