"""Stage 1, prepare: raw rasters and labels to an aligned, masked, indexed stack on one grid (see ``stack``).

Modules: ``scene`` (what prepare wrote), ``labels`` (labels onto the grid), ``stack`` (the stage), ``stats``
(streaming normalisation statistics), ``align`` (target grid, warping, mosaics), ``sensors`` (presets),
``indices`` (spectral indices via spyndex), ``masks`` (quality bands, vectors), ``recipe`` (the serialisable
recipe and :class:`~eoforge.prepare.recipe.RecipeSource`, shared by prepare and predict).
"""

from eoforge.prepare.scene import PreparedScene
from eoforge.prepare.stack import prepare

__all__ = ["PreparedScene", "prepare"]
