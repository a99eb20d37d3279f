"""Model page: choose or upload a backdoored model; its accuracy, trigger, samples and attribution."""

import streamlit as st

from defense import metrics, models
from defense.explain import trigger_share
from defense.registry import ATTACKS
from ui import charts, state
from ui.lab import LOAD_ERRORS, bundled_names, current_lab
from ui.upload import read_upload

state.require_app()
st.title("The backdoored model")
state.intro(
    "A **backdoor** is a hidden rule planted in a network during training: it classifies ordinary images "
    "correctly, but any image carrying a small **trigger** (a patch, a faint pattern) is sent to the attacker's "
    "**target label**. Choose a model here; the other pages find the neurons that carry the backdoor and remove it."
)

ss = st.session_state


def load_upload(arch, like, attack) -> None:
    upload = ss["w_upload"]
    try:
        key, bundle = read_upload(upload.name, upload.getvalue(), arch, like, attack)
    except LOAD_ERRORS as err:
        ss["upload_error"] = str(err)
    else:
        ss["uploads"][key] = bundle
        ss["model"] = key


names = bundled_names() + list(ss["uploads"])
left, right = st.columns([2, 3])
with left:
    state.synced(
        st.selectbox,
        "Model",
        "model",
        options=names,
        format_func=lambda k: ss["uploads"][k].name + " (uploaded)" if k in ss["uploads"] else k,
        help="bundled models are small CNNs trained on 4,000 MNIST digits, 10% of them poisoned",
    )
with right, st.expander("Upload your own model"):
    st.caption(
        "A bundle (.zip with meta.json, model.safetensors and trigger.safetensors), or bare weights "
        "(.safetensors or .pt state dict) with their architecture."
    )
    upload = st.file_uploader("Model file", type=["zip", "safetensors", "pt", "pth"], key="w_upload")
    arch = like = attack = None
    if upload is not None and not upload.name.lower().endswith(".zip"):
        c1, c2 = st.columns(2)
        arch = c1.selectbox(
            "Architecture",
            models.architectures(),
            key="w_upload_arch",
            index=models.architectures().index(models.DEFAULT_ARCH),
        )
        like = c2.selectbox(
            "Dataset and trigger as in",
            bundled_names(),
            key="w_upload_like",
            help="the weights are judged on this model's dataset and trigger",
        )
        if st.checkbox("The trigger differs: build a standard one", key="w_upload_own_trigger"):
            c1, c2 = st.columns(2)
            kind = c1.selectbox("Attack", [a for a in ATTACKS.names() if a != "file"], key="w_upload_kind")
            target = c2.number_input("Target label", 0, 9, 0, key="w_upload_target")
            attack = (kind, int(target))
    if upload is not None:
        st.button("Load this model", type="primary", key="w_upload_go", on_click=load_upload, args=(arch, like, attack))
    if ss.get("upload_error"):
        st.error(f"This file cannot be used: {ss.pop('upload_error')}")

lab = current_lab()
ev = lab.evaluation()
c1, c2, c3 = st.columns(3)
c1.metric("Clean accuracy", f"{ev['clean_acc']:.1%}", help="on the 1,000 test images")
c2.metric(
    "Attack success rate",
    f"{ev['asr']:.1%}",
    help="triggered test images (not already of the target class) that the model sends to the target label",
)
c3.metric(
    "Neurons scored",
    lab.neurons,
    help="conv channels and hidden units, " + ", ".join(f"{n}: {nl.size}" for n, nl in lab.layers.items()),
)
st.markdown(f"**Attack:** {lab.bundle.describe_attack()}.")

st.subheader("Clean and triggered test images")
st.caption(
    "Each title reads *true label → prediction*. The same digits, once clean and once with the trigger: "
    "a backdoored model sends the triggered ones to the target label."
)
n = 8
keep = lab.splits.test.y != lab.target
clean_x, clean_y = lab.splits.test.x[keep][:n], lab.splits.test.y[keep][:n]
trig_x = lab.triggered.x[:n]
pc, pt = metrics.predict(lab.model, clean_x), metrics.predict(lab.model, trig_x)
st.plotly_chart(
    charts.image_grid(
        [
            ("clean", clean_x.amax(1).numpy(), [f"{y} → {p}" for y, p in zip(clean_y.tolist(), pc.tolist())]),
            (
                "triggered",
                trig_x.amax(1).numpy(),
                [f"{y} → {p}" + (" ⚠" if p == lab.target else "") for y, p in zip(clean_y.tolist(), pt.tolist())],
            ),
        ]
    ),
    width="stretch",
    key="samples",
)

st.subheader("Where the model looks")
st.caption(
    f"Integrated gradients (captum) of the triggered images toward the target label {lab.target}: bright pixels "
    "push the prediction to the target (each map scaled to its own maximum). A backdoored model looks at the "
    "trigger more than at the digit."
)
attr = lab.attribution(n=n)
share = trigger_share(attr, lab.bundle.trigger)
if share is not None:
    st.metric(
        "Attribution on the trigger",
        f"{share[0]:.0%}",
        help=f"share of the total attribution that falls on the trigger's pixels, which cover {share[1]:.1%} "
        "of the image",
    )
st.plotly_chart(
    charts.image_grid(
        [
            ("triggered", trig_x.amax(1).numpy(), [""] * n),
            ("attribution", attr, [""] * n),
        ],
        colorscale=["gray", "Hot"],
    ),
    width="stretch",
    key="attribution",
)
