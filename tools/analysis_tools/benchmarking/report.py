"""What every table shares: rows that could not be measured, the markdown
printing, and the JSON file of a run."""
import json
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from wavevit_mm.checkpoint import write_text_atomically
from wavevit_mm.errors import one_paragraph


def failed_row(row: Dict, error: BaseException, device: torch.device
               ) -> Dict:
    """A row whose measurement could not be made (a library that does not
    import, memory that ran out): the error goes into the row and the
    table goes on with the next one."""
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return dict(row, error=f'{type(error).__name__}: {one_paragraph(error)}')


def ms(seconds: float) -> str:
    return f'{seconds * 1e3:.1f}'


def gb(value: Optional[int]) -> str:
    return f'{value / 2**30:.2f}' if value is not None else '-'


def format_shape(dims: Iterable[int]) -> str:
    return 'x'.join(map(str, dims))


def print_markdown(header: Sequence[str], rows: List[Dict],
                   cells: Callable[[Dict], Sequence[str]]) -> None:
    """A markdown table of the measured ``rows``, one line of ``cells(row)``
    each, then a line for each row that could not be measured."""
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for row in rows:
        if 'error' not in row:
            print('| ' + ' | '.join(cells(row)) + ' |')
    for row in rows:
        if 'error' in row:
            print(f'{row["name"]} {row.get("dtype", "")}: not measured: '
                  f'{row["error"]}')


def environment(device: torch.device) -> Dict:
    """What the figures were measured on."""
    info = dict(device=str(device), torch=torch.__version__,
                threads=torch.get_num_threads())
    if device.type == 'cuda':
        info.update(name=torch.cuda.get_device_name(device),
                    cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def write_json(path: Optional[str], results: Dict) -> None:
    """Every figure so far, rewritten after each table, so a run cut short
    keeps what it measured."""
    if path:
        write_text_atomically(path, json.dumps(results, indent=1))
