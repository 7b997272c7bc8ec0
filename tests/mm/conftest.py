"""Skip tests/mm where OpenMMLab (with mmcv's compiled ops) is not installed."""

import pytest

pytest.importorskip("mmdet", reason="OpenMMLab is not installed (pip install -e '.[mm]', tools/install_mmcv.sh)")
pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
pytest.importorskip("mmcv.ops", reason="mmcv has no compiled ops (tools/install_mmcv.sh builds them)")
