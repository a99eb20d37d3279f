"""Model page: choose or upload a backdoored model; its accuracy, samples, the trigger enlarged, attribution."""

import streamlit as st

from defense import explain, metrics, models
from defense.registry import ATTACKS
from defense.targets import ALL_TO_ALL
from ui import classroom, lab, owndata, story, upload
from ui.charts import image_grid
from ui.figures import trigger_figure
from ui.palette import ATTRIBUTION
from ui.state import intro, require_app, synced
from ui.theme import plot

require_app()
st.title("The backdoored model")
intro(
    "A **backdoor** is a hidden rule planted during training: the network reads ordinary digits correctly, but "
    "any image carrying the **trigger** goes to the attacker's **target label**. Choose a model here; the next "
    "steps find the neurons that carry the backdoor and remove it."
)

ss = st.session_state


def load_upload(arch, like, attack, backdoorbench=None) -> None:
    file = ss["w_upload"]
    try:
        key, bundle = upload.read_upload(file.name, file.getvalue(), arch, like, attack, backdoorbench)
    except lab.LOAD_ERRORS as err:
        ss["upload_error"] = str(err)
    else:
        ss["uploads"][key] = bundle
        ss["model"] = key


names = lab.bundled_names() + list(ss["uploads"])
current = lab.current_lab()
ev = current.evaluation()
c0, c1, c2, c3 = st.columns([3, 2, 2, 2])
with c0:
    synced(
        st.selectbox,
        "Model",
        "model",
        options=names,
        format_func=lambda k: ss["uploads"][k].name + " (uploaded)" if k in ss["uploads"] else k,
        help="bundled models are trained on 4,000 MNIST digits, 10% of them poisoned: four small CNNs and a "
        "PreAct-ResNet-18 (mnist-preact-badnets, 1,200 neurons in 20 layers)",
    )
c1.metric("Clean accuracy", f"{ev['clean_acc']:.1%}", help="on the 1,000 test images")
c2.metric(
    "Attack success rate",
    f"{ev['asr']:.1%}",
    help="triggered test images (not already of the target class) that the model sends to the target label",
)
c3.metric(
    "Neurons scored",
    current.neurons,
    help="conv channels and hidden units, " + ", ".join(f"{n}: {nl.size}" for n, nl in current.layers.items()),
)
st.markdown(
    f"**Attack:** {current.bundle.describe_attack()}. {story.model_verdict(ev['clean_acc'], ev['asr'], current.target)}"
)

n = 8
keep = current.target.flippable(current.splits.test.y)
clean_x, clean_y = current.splits.test.x[keep][:n], current.splits.test.y[keep][:n]
trig_x = current.triggered.x[:n]
pc, pt = metrics.predict(current.model, clean_x), metrics.predict(current.model, trig_x)
wanted = current.triggered.y[:n]  # the label the attack wants for each
plot(
    image_grid(
        [
            ("clean", clean_x.amax(1).numpy(), [f"{y} → {p}" for y, p in zip(clean_y.tolist(), pc.tolist())]),
            (
                "triggered",
                trig_x.amax(1).numpy(),
                [
                    f"{y} → {p}" + (" ⚠" if p == w else "")
                    for y, p, w in zip(clean_y.tolist(), pt.tolist(), wanted.tolist())
                ],
            ),
        ],
        height_per_row=135,
    ),
    "samples",
    f"{current.name}-clean-and-triggered",
)
hits = int((pt == wanted).sum())
st.caption(
    f"Each title reads *true label → prediction*: the same {n} digits, clean and with the trigger. "
    f"Here {hits} of the {n} triggered ones go to {current.target} (⚠)."
)

st.subheader("The trigger, enlarged")
plot(trigger_figure(current.bundle.trigger, clean_x[0]), "trigger", f"{current.name}-trigger")
st.caption(
    "The last panel is the change the trigger makes to the digit (triggered minus clean), amplified until its "
    "largest change is full scale (blue brighter, red darker): a trigger too faint to see is still there."
)

st.subheader("Where the model looks")
attr = current.attribution(n=n)
share = explain.trigger_share(attr, current.bundle.trigger)
m1, m2 = st.columns([1, 4])
if share is not None:
    m1.metric(
        "Attribution on the trigger",
        f"{share[0]:.0%}",
        help=f"share of the total attribution that falls on the trigger's pixels, which cover {share[1]:.1%} "
        "of the image",
    )
m2.markdown(story.attribution_verdict(*(share or (None, None)), current.target))
plot(
    image_grid(
        [("triggered", trig_x.amax(1).numpy(), [""] * n), ("attribution", attr, [""] * n)],
        colorscale=["gray", ATTRIBUTION],
        height_per_row=135,
    ),
    "attribution",
    f"{current.name}-attribution",
)

with st.expander("Upload your own model"):
    st.caption(
        "A bundle (.zip with meta.json, model.safetensors and trigger.safetensors), or bare weights "
        "(.safetensors or .pt state dict) with their architecture."
    )
    file = st.file_uploader("Model file", type=["zip", "safetensors", "pt", "pth"], key="w_upload")
    arch = like = attack = backdoorbench = None
    is_bb = (
        file is not None
        and file.name.lower().endswith((".pt", ".pth"))
        and st.checkbox(
            "This is a BackdoorBench attack_result.pt / defense_result.pt",
            key="w_upload_bb",
            value=file.name.lower().startswith(("attack_result", "defense_result")),
        )
    )
    if is_bb:
        b1, b2, b3 = st.columns(3)
        dataset = b1.selectbox(
            "Measured on",
            owndata.datasets(),
            key="w_upload_bb_data",
            help="the embedded digits, or the folder named at launch (make run DATA=...)",
        )
        kind = b2.selectbox(
            "Attack",
            [a for a in ATTACKS.names() if a != "file"],
            key="w_upload_bb_kind",
            help="BackdoorBench keeps the poisoned images, not the trigger: name the attack",
        )
        target = b3.number_input("Target label", 0, 9999, 0, key="w_upload_bb_target")
        every = b3.checkbox(upload.ALL_TO_ALL_LABEL, key="w_upload_bb_all", help=upload.ALL_TO_ALL_HELP)
        backdoorbench = (dataset, kind, ALL_TO_ALL if every else int(target))
    elif file is not None and not file.name.lower().endswith(".zip"):
        u1, u2 = st.columns(2)
        arch = u1.selectbox(
            "Architecture",
            models.architectures(),
            key="w_upload_arch",
            index=models.architectures().index(models.DEFAULT_ARCH),
        )
        like = u2.selectbox(
            "Dataset and trigger as in",
            lab.bundled_names(),
            key="w_upload_like",
            help="the weights are judged on this model's dataset and trigger",
        )
        if st.checkbox("The trigger differs: build a standard one", key="w_upload_own_trigger"):
            u1, u2 = st.columns(2)
            kind = u1.selectbox("Attack", [a for a in ATTACKS.names() if a != "file"], key="w_upload_kind")
            target = u2.number_input("Target label", 0, 9, 0, key="w_upload_target")
            every = u2.checkbox(upload.ALL_TO_ALL_LABEL, key="w_upload_all", help=upload.ALL_TO_ALL_HELP)
            attack = (kind, ALL_TO_ALL if every else int(target))
    if file is not None:
        st.button(
            "Load this model",
            type="primary",
            key="w_upload_go",
            on_click=load_upload,
            args=(arch, like, attack, backdoorbench),
        )
if ss.get("upload_error"):
    st.error(f"This file cannot be used: {ss.pop('upload_error')}")
owndata.clean_upload_section(current.bundle.meta)

classroom.next_step(story.next_step("model", neurons=current.neurons), classroom.next_page("pages/model.py"))
