"""Healing and the shared recipe on the real embedded zoo: seam matching, the probe head, distillation."""

import torch

from dery_deploy.network.plan import BlockRef, Plan, build_net


def _cheap_stem_plan(zoo, dis) -> Plan:
    """convnext_lower's cheap stem in front of resnet10t_tops's blocks: one seam of high stitch error."""
    n = dis["resnet10t_tops"].num_body_units
    blocks = [BlockRef(0, "convnext_lower", 0, 2), BlockRef(1, "resnet10t_tops", 1, n)]
    return Plan(zoo.name, zoo.hash(), blocks, 10, zoo_ref=zoo.ref)


def test_seam_matching_lowers_the_stitch_error(fashion_zoo, fashion_task):
    from dery_deploy.assemble.candidates import AdapterFitter
    from dery_deploy.train.heal import match_seams
    from dery_deploy.zoo.load import dissect_zoo

    dis = dissect_zoo(fashion_zoo)
    plan = _cheap_stem_plan(fashion_zoo, dis)
    torch.manual_seed(0)
    net = build_net(plan, fashion_zoo, dis)
    [lsq] = AdapterFitter.for_task(dis, fashion_task, 128).init(net, plan)
    hist = match_seams(net, plan, dis, fashion_task, epochs=2, images_per_epoch=2048)
    assert lsq > 0.7  # two donors' features this different are badly stitched by a linear map alone
    assert hist[-1].seam_rel_mse < 0.7 * lsq
    # the donors' own units are untouched: the network trained copies
    assert not any(p.grad is not None for p in dis["convnext_lower"].units[0].module.parameters())


def test_seam_matching_on_a_folder_with_few_unlabelled_images(fashion_zoo, fashion_task):
    """A user's folder holds 160 unlabelled images, the recipe asks for 4096 per epoch: each epoch is
    one pass over the 160 (no empty batches, no NaN), and the history says how many it used."""
    import dataclasses

    from dery_deploy.train.heal import match_seams
    from dery_deploy.zoo.load import dissect_zoo

    dis = dissect_zoo(fashion_zoo)
    plan = _cheap_stem_plan(fashion_zoo, dis)
    few = dataclasses.replace(fashion_task, unlabelled=fashion_task.unlabelled.subset(range(160)))
    torch.manual_seed(0)
    net = build_net(plan, fashion_zoo, dis)
    hist = match_seams(net, plan, dis, few, epochs=2, images_per_epoch=4096, batch=128)
    assert [h.images for h in hist] == [128, 128]
    assert all(torch.isfinite(torch.tensor(h.seam_rel_mse)) for h in hist)
    one = dataclasses.replace(fashion_task, unlabelled=fashion_task.unlabelled.subset([0]))
    assert match_seams(net, plan, dis, one, epochs=1, images_per_epoch=4096) == []  # nothing to learn from


def test_whole_donor_plan_is_the_donor(fashion_zoo, tiny_ws):
    from dery_deploy.assemble.candidates import donor_plan
    from dery_deploy.network.items import donor_key, plan_items
    from dery_deploy.zoo.load import load_donor

    plan = donor_plan(tiny_ws.zoo, tiny_ws.partition, "res", 7)
    net = build_net(plan, tiny_ws.zoo, tiny_ws.dis)
    ref = load_donor(tiny_ws.zoo, "res")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.forward_features(x), ref.forward_features(x))
    assert net(x).shape == (2, 7) and plan.describe() == "res (whole donor)"
    assert plan_items(plan, tiny_ws.zoo, tiny_ws.dis) == [donor_key(tiny_ws.zoo, "res", 7)]  # measured whole


def test_probe_head_and_distillation(fashion_zoo, fashion_task, tmp_path):
    from dery_deploy.train.finetune import FinetuneSource, accuracy, finetune, load_run_model
    from dery_deploy.train.head_init import fit_head
    from dery_deploy.train.recipe import Recipe
    from dery_deploy.train.teacher import make_teacher
    from dery_deploy.zoo.load import load_donor

    m = load_donor(fashion_zoo, "resnet10t_tops")
    m.reset_classifier(10)
    assert accuracy(m, fashion_task.x("val"), fashion_task.y("val"))[0] < 30  # a random head
    fit_head(m, fashion_task.x("train"), fashion_task.y("train"), 10)
    assert accuracy(m, fashion_task.x("val"), fashion_task.y("val"))[0] > 60  # a linear probe on good features
    src = FinetuneSource.of_donor("resnet10t_tops", fashion_zoo.ref)
    finetune(
        src,
        fashion_zoo,
        fashion_task,
        Recipe(epochs_adapter=1, epochs_full=0),
        tmp_path / "t",
        log=None,
        progress=False,
        test=False,
    )
    teacher = make_teacher([tmp_path / "t"], fashion_task, pool=512, cache=tmp_path, load=load_run_model)
    assert (tmp_path / f"teacher-{teacher.key}.safetensors").is_file() and teacher.logits.shape == (512, 10)
    recipe = Recipe(epochs_adapter=0, epochs_full=3, distill=1.0, distill_images=512, head_init="random")
    m = finetune(
        FinetuneSource.of_donor("mnv3_rot", fashion_zoo.ref),
        fashion_zoo,
        fashion_task,
        recipe,
        tmp_path / "s",
        log=None,
        progress=False,
        test=False,
        teacher=teacher,
    )
    kd = [h.distill_loss for h in m.history]
    assert kd[-1] < kd[0]
    cfg = __import__("json").loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["teacher"]["key"] == teacher.key  # a run records what it was distilled from
