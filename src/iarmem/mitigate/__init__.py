"""Mitigation: choose memorizing units from a localization run, scale them, write the edited model.

The sweep uses the Python API: ``load_localization`` once, then ``select_units`` /
``forget_units`` and ``temporary_edit`` (or ``edited_copy``) per grid point.
"""

from iarmem.mitigate.edit import EDITS, EditRecord, apply_edit, edited_copy, temporary_edit
from iarmem.mitigate.forget import forget_units
from iarmem.mitigate.localization import Localization, check_architecture, load_localization
from iarmem.mitigate.select import CONTROLS, REDUCES, SCOPES, Selection, reduce_scores, select_units
from iarmem.mitigate.write import edit_manifest, write_edited_model

__all__ = [
    "CONTROLS", "EDITS", "REDUCES", "SCOPES", "EditRecord", "Localization", "Selection", "apply_edit",
    "check_architecture", "edit_manifest", "edited_copy", "forget_units", "load_localization",
    "reduce_scores", "select_units", "temporary_edit", "write_edited_model",
]
