import numpy as np
import pytest

from jaxthyroid import findings
from jaxthyroid.findings import DEFAULT, Taxonomy, UnknownFindingError


def test_default_label_space():
    assert DEFAULT.findings == ("normal", "graves", "hashimoto", "subacute_thyroiditis", "hot_nodule", "cold_nodule")
    assert DEFAULT.num_sets == 12
    assert len(DEFAULT.single_set_ids) == 6 and len(DEFAULT.cross_set_ids) == 6
    assert DEFAULT.set_table.shape == (12, 6)
    assert (DEFAULT.set_table.sum(1) == [1] * 6 + [2] * 6).all()


def test_folder_round_trip():
    assert DEFAULT.folder_name(("hot_nodule", "graves")) == "graves+hot_nodule"
    for i, s in enumerate(DEFAULT.finding_sets):
        name = DEFAULT.folder_name(s)
        assert DEFAULT.parse_folder_name(name) == s
        assert DEFAULT.set_id(name) == i
        assert DEFAULT.decode(DEFAULT.encode(name)) == s
    np.testing.assert_array_equal(DEFAULT.set_id_of_multi_hot(DEFAULT.set_table), np.arange(12))
    assert DEFAULT.set_id_of_multi_hot(np.ones(6)) == -1


def test_unknown_names_are_reported_with_known_ones():
    with pytest.raises(UnknownFindingError, match="Known folder names: normal, graves"):
        DEFAULT.parse_folder_name("graves+goitre")
    with pytest.raises(UnknownFindingError, match="not one of this taxonomy"):
        DEFAULT.set_id("normal+graves")


def test_taxonomy_from_folders():
    t = Taxonomy.from_folder_names(["b_thing", "graves", "a_thing+graves"])
    assert t.findings == ("graves", "a_thing", "b_thing")
    assert t.finding_sets == (("graves",), ("b_thing",), ("graves", "a_thing"))
    assert Taxonomy.from_dict(t.to_dict()) == t


def test_predict_falls_back_to_argmax():
    p = np.array([[0.1, 0.7, 0.2, 0.0, 0.6, 0.1], [0.1, 0.3, 0.2, 0.0, 0.4, 0.1]])
    np.testing.assert_array_equal(findings.predict(p), [[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 1, 0]])
