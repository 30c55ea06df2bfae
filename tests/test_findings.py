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


def test_set_log_likelihood_by_hand():
    tax = Taxonomy(findings=("a", "b"), finding_sets=(("a",), ("b",), ("a", "b")))
    p = np.array([0.8, 0.4])
    want = np.log([0.8 * 0.6, 0.2 * 0.4, 0.8 * 0.4])
    # float64 sums of 2 logs (a few roundings of ~1e-16): 1e-12 is the bound with room
    np.testing.assert_allclose(findings.set_log_likelihood(p, tax), want, rtol=1e-12)
    assert findings.predict_set_ids(p, tax) == 0
    # No finding looks present: the default taxonomy's answer is the normal gland.
    # graves alone has the highest set likelihood (0.3 * 0.95^5 vs normal's 0.05 * 0.7 *
    # 0.95^4), but "no finding" (0.7 * 0.95^5) is likelier still, and it reads as normal.
    low = np.array([[0.05, 0.3, 0.05, 0.05, 0.05, 0.05]])
    assert findings.set_log_likelihood(low).argmax() == DEFAULT.set_id("graves")
    np.testing.assert_array_equal(findings.predict(low, decision="set"), [[1, 0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="decision"):
        findings.predict(low, decision="vote")
