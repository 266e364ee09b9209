// The drawing page: black ink on a white canvas, read by POST api/recognize as you draw.
//
// Strokes are kept as points in 0..1 of the canvas size, so Undo and a resize redraw them
// exactly. The canvas is sent as a PNG at most every RECOGNIZE_DELAY_MS while drawing, one
// request at a time; an answer for a drawing that has since changed is not shown.
"use strict";

const RECOGNIZE_DELAY_MS = 250;
// Brush width as a fraction of the canvas height: a digit drawn over most of the height then
// has strokes about as thick, relative to its size, as MNIST's.
const BRUSH_FRACTION = 0.07;

const canvas = document.getElementById("canvas");
const context = canvas.getContext("2d");
const answer = document.getElementById("answer");
const sentence = document.getElementById("sentence");
const digitsBox = document.getElementById("digits");
const undoButton = document.getElementById("undo");
const clearButton = document.getElementById("clear");

const strokes = []; // each: array of {x, y} in 0..1
let current = null; // the stroke being drawn
let activePointer = null;
let timer = null;
let inFlight = false;
let dirty = false;
let generation = 0; // bumped whenever the drawing changes; stale answers are dropped

// --- drawing ------------------------------------------------------------------------------

function brushWidth() {
  return Math.max(2, BRUSH_FRACTION * canvas.height);
}

function setUpPen() {
  context.lineCap = "round";
  context.lineJoin = "round";
  context.strokeStyle = "#000";
  context.fillStyle = "#000";
  context.lineWidth = brushWidth();
}

function redraw() {
  context.fillStyle = "#fff";
  context.fillRect(0, 0, canvas.width, canvas.height);
  setUpPen();
  for (const stroke of strokes) {
    drawStroke(stroke);
  }
}

function drawStroke(stroke) {
  const w = canvas.width;
  const h = canvas.height;
  if (stroke.length === 1) {
    context.beginPath();
    context.arc(stroke[0].x * w, stroke[0].y * h, brushWidth() / 2, 0, 2 * Math.PI);
    context.fill();
    return;
  }
  context.beginPath();
  context.moveTo(stroke[0].x * w, stroke[0].y * h);
  for (const point of stroke.slice(1)) {
    context.lineTo(point.x * w, point.y * h);
  }
  context.stroke();
}

function drawSegment(from, to) {
  context.beginPath();
  context.moveTo(from.x * canvas.width, from.y * canvas.height);
  context.lineTo(to.x * canvas.width, to.y * canvas.height);
  context.stroke();
}

// The drawing buffer follows the displayed size times the device pixel ratio: sharp ink.
function resize() {
  const box = canvas.getBoundingClientRect();
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(box.width * ratio));
  const height = Math.max(1, Math.round(box.height * ratio));
  if (width !== canvas.width || height !== canvas.height) {
    canvas.width = width;
    canvas.height = height;
    redraw();
  }
}

function pointOf(event) {
  const box = canvas.getBoundingClientRect();
  return {
    x: (event.clientX - box.left) / box.width,
    y: (event.clientY - box.top) / box.height,
  };
}

canvas.addEventListener("pointerdown", (event) => {
  if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) {
    return;
  }
  event.preventDefault();
  activePointer = event.pointerId;
  canvas.setPointerCapture(event.pointerId);
  current = [pointOf(event)];
  strokes.push(current);
  setUpPen();
  drawStroke(current);
  changed();
});

canvas.addEventListener("pointermove", (event) => {
  if (event.pointerId !== activePointer) {
    return;
  }
  event.preventDefault();
  // Coalesced events keep fast pen and touch strokes smooth.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const point = pointOf(each);
    drawSegment(current[current.length - 1], point);
    current.push(point);
  }
  changed();
});

function endStroke(event) {
  if (event.pointerId !== activePointer) {
    return;
  }
  activePointer = null;
  current = null;
  changed();
}

canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

function undo() {
  if (current !== null || !strokes.length) {
    return;
  }
  strokes.pop();
  redraw();
  changed();
}

function clear() {
  if (current !== null) {
    return;
  }
  strokes.length = 0;
  redraw();
  changed();
}

undoButton.addEventListener("click", undo);
clearButton.addEventListener("click", clear);
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") {
    event.preventDefault();
    undo();
  } else if (event.key === "Escape") {
    clear();
  }
});

// --- recognition --------------------------------------------------------------------------

function changed() {
  generation += 1;
  drawingChanged();
  undoButton.disabled = !strokes.length;
  clearButton.disabled = !strokes.length;
  if (!strokes.length) {
    clearTimeout(timer);
    timer = null;
    dirty = false;
    showEmpty();
    return;
  }
  dirty = true;
  answer.dataset.state = "pending";
  // At most one request per delay while drawing, and one after the last change.
  if (timer === null) {
    timer = setTimeout(send, RECOGNIZE_DELAY_MS);
  }
}

// The image sent is the canvas scaled down to SEND_MAX_SIDE pixels on its longer side at most,
// whatever the screen: the model sees 28x28, and a canvas at display size times the pixel ratio
// takes the server several times longer to decode and search for ink. The brush scales with the
// canvas, so a stroke stays several pixels wide.
const SEND_MAX_SIDE = 280;

function imageToSend() {
  const scale = Math.min(1, SEND_MAX_SIDE / Math.max(canvas.width, canvas.height));
  const small = document.createElement("canvas");
  small.width = Math.max(1, Math.round(canvas.width * scale));
  small.height = Math.max(1, Math.round(canvas.height * scale));
  const pen = small.getContext("2d");
  pen.imageSmoothingEnabled = true;
  pen.imageSmoothingQuality = "high"; // averages the pixels it drops: no broken thin lines
  pen.drawImage(canvas, 0, 0, small.width, small.height);
  return new Promise((resolve) => small.toBlob(resolve, "image/png"));
}

async function send() {
  timer = null;
  if (inFlight || !dirty) {
    return; // the request in flight sends again when it returns
  }
  dirty = false;
  inFlight = true;
  const asked = generation;
  try {
    const image = await imageToSend();
    const response = await fetch("api/recognize?stages=1", {
      method: "POST",
      headers: { "Content-Type": "image/png" },
      body: image,
    });
    const body = await response.json();
    if (asked === generation) {
      if (response.ok) {
        show(body);
        readingShown(image, body);
      } else {
        showError(body.detail || `server answered ${response.status}`);
      }
    }
  } catch (error) {
    if (asked === generation) {
      showError("the server cannot be reached");
    }
  } finally {
    inFlight = false;
    if (dirty && timer === null) {
      timer = setTimeout(send, RECOGNIZE_DELAY_MS);
    }
  }
}

function percent(value) {
  return `${(100 * value).toFixed(1)}%`;
}

function showEmpty() {
  answer.textContent = "no digit found";
  answer.className = "empty";
  answer.dataset.state = "done";
  sentence.textContent = strokes.length ? "Draw larger or darker." : "Draw in the white box.";
  digitsBox.replaceChildren();
}

function showError(message) {
  answer.textContent = "no answer";
  answer.className = "empty error";
  answer.dataset.state = "done";
  sentence.textContent = message;
  digitsBox.replaceChildren();
}

function show(result) {
  // Marks that are not digits (a letter, a scribble) are left out of the answer.
  const digits = result.digits.filter((digit) => !digit.not_digit);
  if (!digits.length) {
    showEmpty();
    return;
  }
  answer.textContent = result.text || result.number;
  answer.className = "";
  answer.dataset.state = "done";
  const uncertain = digits.some((digit) => digit.uncertain) ? ", uncertain" : "";
  if (digits.length === 1) {
    sentence.textContent =
      `The number is probably ${result.number === "8" ? "an" : "a"} ${result.number} ` +
      `(${percent(digits[0].confidence)}${uncertain})`;
  } else {
    const lowest = Math.min(...digits.map((digit) => digit.confidence));
    sentence.textContent =
      `The number is probably ${result.number} ` +
      `(every digit at least ${percent(lowest)} sure${uncertain})`;
  }
  digitsBox.replaceChildren(...digits.map(digitCard));
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

// One digit: the 28x28 image the model saw and a bar per class.
function digitCard(digit, index) {
  const card = element("div", digit.uncertain ? "digit uncertain" : "digit");
  const seen = element("figure", "seen");
  seen.style.margin = "0";
  if (digit.image) {
    const image = element("img");
    image.src = digit.image;
    image.alt = `28x28 model input for digit ${index + 1}`;
    seen.append(image);
  }
  seen.append(element("figcaption", "", digit.uncertain ? "uncertain" : "model input"));
  const bars = element("div", "bars");
  digit.probabilities.forEach((probability, label) => {
    const top = label === digit.digit ? " top" : "";
    const track = element("div", `track${top}`);
    const fill = element("div", "fill");
    fill.style.width = `${(100 * probability).toFixed(1)}%`;
    track.append(fill);
    bars.append(element("span", top.trim(), String(label)), track,
      element("span", `percent${top}`, percent(probability)));
  });
  card.append(seen, bars);
  return card;
}

// --- feedback and photos ------------------------------------------------------------------
//
// Under an answer, "Right" stores the image read with that answer and "Wrong?" with the number
// typed (POST api/feedback), so the model can later be fine-tuned on them. A photo or image file
// is read by the same api/recognize and shown with a box around each digit found.

const MAX_PHOTO_WIDTH = 640; // display pixels: boxes stay legible, large photos stay light
const LABEL_PATTERN = /^[0-9.,\-\/:\n]{1,32}$/; // what the feedback store accepts
const feedbackBox = document.getElementById("feedback");
const rightButton = document.getElementById("right");
const correctionForm = document.getElementById("correction");
const correctInput = document.getElementById("correct");
const feedbackStatus = document.getElementById("feedback-status");
const photoInput = document.getElementById("photo");
const photoFigure = document.getElementById("photo-figure");
const photoView = document.getElementById("photo-view");
let lastReading = null; // {image: Blob, text}: what the answer on screen was read from

// An answer is on screen for `image` (null: none is); feedback is offered only for digits.
function readingShown(image, result) {
  const read = result && result.digits.some((digit) => !digit.not_digit);
  lastReading = image && read ? { image, text: result.text || result.number } : null;
  feedbackBox.hidden = lastReading === null;
  correctInput.value = "";
  setFeedbackStatus("", "");
}

function drawingChanged() {
  readingShown(null, null);
  photoFigure.hidden = true;
}

function setFeedbackStatus(text, state) {
  feedbackStatus.textContent = text;
  feedbackStatus.dataset.state = state;
}

async function sendFeedback(label) {
  if (lastReading === null) {
    return;
  }
  const form = new FormData();
  form.append("file", lastReading.image, lastReading.image.name || "drawing.png");
  form.append("label", label);
  setFeedbackStatus("saving...", "pending");
  try {
    const response = await fetch("api/feedback", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      setFeedbackStatus(body.detail || `server answered ${response.status}`, "error");
      return;
    }
    const note = body.usable ? "" : ` (kept aside: ${body.reason})`;
    setFeedbackStatus(`Thank you: saved as record ${body.id}${note}`, "saved");
  } catch (error) {
    setFeedbackStatus("the server cannot be reached", "error");
  }
}

rightButton.addEventListener("click", () => {
  if (lastReading !== null) {
    sendFeedback(lastReading.text);
  }
});

correctionForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const label = correctInput.value.trim();
  if (!label) {
    setFeedbackStatus("type the right number first", "error");
    return;
  }
  // The server checks the label too; this only saves a round trip for a typing slip.
  if (!LABEL_PATTERN.test(label) || !/[0-9]/.test(label)) {
    setFeedbackStatus("the right number may hold only digits and . , - / :", "error");
    return;
  }
  sendFeedback(label);
});

async function readPhoto(file) {
  generation += 1; // an answer for the drawing still on its way is no longer wanted
  readingShown(null, null);
  answer.dataset.state = "pending";
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  try {
    const response = await fetch("api/recognize?stages=1", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      photoFigure.hidden = true;
      showError(body.detail || `server answered ${response.status}`);
      return;
    }
    show(body);
    readingShown(file, body);
    await drawPhoto(file, body.digits);
  } catch (error) {
    photoFigure.hidden = true;
    showError("the server cannot be reached");
  }
}

// The photo, scaled to fit, with a box around each digit read (dashed: not a digit).
async function drawPhoto(file, digits) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file); // upright by its EXIF, as the server reads it
  } catch (error) {
    photoFigure.hidden = true; // a format this browser cannot show; the answer stands
    return;
  }
  const scale = Math.min(1, MAX_PHOTO_WIDTH / bitmap.width);
  photoView.width = Math.max(1, Math.round(bitmap.width * scale));
  photoView.height = Math.max(1, Math.round(bitmap.height * scale));
  const view = photoView.getContext("2d");
  view.drawImage(bitmap, 0, 0, photoView.width, photoView.height);
  view.lineWidth = 2;
  view.font = "bold 16px system-ui, sans-serif";
  for (const digit of digits) {
    const [x, y, width, height] = digit.box.map((value) => value * scale);
    view.strokeStyle = digit.not_digit ? "#b25b00" : "#2458d6";
    view.setLineDash(digit.not_digit ? [4, 3] : []);
    view.strokeRect(x, y, width, height);
    if (!digit.not_digit) {
      view.fillStyle = "#2458d6";
      view.fillText(String(digit.digit), x, Math.max(14, y - 4));
    }
  }
  photoFigure.hidden = false;
}

photoInput.addEventListener("change", () => {
  if (photoInput.files.length) {
    readPhoto(photoInput.files[0]);
  }
});

// --- start --------------------------------------------------------------------------------

async function showModel() {
  const line = document.getElementById("model");
  try {
    const card = await (await fetch("api/model")).json();
    const parts = [`model: ${card.model}`];
    if (card.parameters) {
      parts.push(`${card.parameters.toLocaleString("en-US")} parameters`);
    }
    if (typeof card.test_accuracy === "number") {
      parts.push(`test accuracy ${(100 * card.test_accuracy).toFixed(2)}%`);
    }
    if (card.dataset && card.dataset.name) {
      parts.push(`trained on ${card.dataset.name}`);
    }
    if (card.recipe_name) {
      parts.push(`recipe ${card.recipe_name}`);
    }
    line.textContent = parts.join(" · ");
  } catch (error) {
    line.textContent = "model: unknown (the server cannot be reached)";
  }
}

new ResizeObserver(resize).observe(canvas);
resize();
redraw();
changed();
showModel();
