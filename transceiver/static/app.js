// The browser side of a voxrelay call: microphone in, reply audio out, and
// the transceiver's JSON events (data channel "events") shown as text.
// The page is served by the transceiver, so the API is same-origin.
"use strict";

const $ = (id) => document.getElementById(id);
let pc = null;
let location_ = null;

function setStatus(text) { $("status").textContent = text; }

function log(cls, text) {
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  $("log").appendChild(p);
}

function headers() {
  const h = { "Content-Type": "application/sdp" };
  const token = $("token").value || new URLSearchParams(window.location.search).get("token");
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

function onEvent(event) {
  if (event.type === "transcript" && event.final) {
    $("transcript").textContent = event.text;
    log("transcript", event.text);
  } else if (event.type === "transcript") {
    $("transcript").textContent = event.text + "…";
  } else if (event.type === "reply") {
    $("reply").textContent = event.text;
    log("reply", event.text);
  } else if (event.type === "timings" && event.first_audio_ms !== undefined) {
    log("timings", "first reply audio " + event.first_audio_ms.toFixed(0) + " ms after end of speech");
  } else if (event.type === "error") {
    log("error", "error: " + event.message);
  }
}

async function call() {
  $("call").disabled = true;
  setStatus("asking for the microphone");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.onconnectionstatechange = () => setStatus(pc.connectionState);
  pc.ontrack = (e) => { $("remote").srcObject = e.streams[0] || new MediaStream([e.track]); };
  const events = pc.createDataChannel("events");
  events.onmessage = (m) => onEvent(JSON.parse(m.data));
  for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  // Wait for ICE gathering so that the offer carries candidates (no trickle).
  if (pc.iceGatheringState !== "complete") {
    await new Promise((resolve) => {
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === "complete") resolve(); };
      setTimeout(resolve, 2000);
    });
  }
  setStatus("calling");
  const response = await fetch("/v1/calls", { method: "POST", headers: headers(), body: pc.localDescription.sdp });
  if (response.status !== 201) {
    const body = await response.json().catch(() => ({}));
    setStatus("refused: " + response.status + " " + ((body.error || {}).message || ""));
    $("call").disabled = false;
    return;
  }
  location_ = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  $("hangup").disabled = false;
}

async function hangup() {
  if (location_) await fetch(location_, { method: "DELETE", headers: headers() });
  if (pc) pc.close();
  pc = null; location_ = null;
  setStatus("ended");
  $("hangup").disabled = true;
  $("call").disabled = false;
}

$("call").onclick = () => call().catch((e) => { setStatus("error: " + e); $("call").disabled = false; });
$("hangup").onclick = () => hangup();
// ?autostart=1 lets a headless browser (the end-to-end test) place the call.
if (new URLSearchParams(window.location.search).get("autostart")) $("call").click();
