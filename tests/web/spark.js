// Draw one splat file with Spark (see spark.html): the camera is ours, converted to three.js.
import * as THREE from "three";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

const q = new URLSearchParams(location.search);
const width = Number(q.get("w"));
const height = Number(q.get("h"));

function threeCamera() {
  if (q.has("eye")) {
    // A camera at `eye` looking at `target` (the file's coordinates) with three.js's default up vector, +Y.
    const camera = new THREE.PerspectiveCamera(Number(q.get("fovy")), width / height, 0.01, 100);
    camera.position.set(...q.get("eye").split(",").map(Number));
    camera.lookAt(...q.get("target").split(",").map(Number));
    camera.updateMatrixWorld(true);
    return camera;
  }
  // Ours: OpenCV axes (x right, y down, z forward). three.js: x right, y up, looking down -z.
  // So the three.js camera-to-world is ours times diag(1, -1, -1): a rotation (det +1), no scale.
  const c2w = new THREE.Matrix4().set(...q.get("c2w").split(",").map(Number));
  c2w.multiply(new THREE.Matrix4().makeScale(1, -1, -1));
  // Our K has f = 0.5 h / tan(fovy / 2) and the principal point at the image centre: three.js's
  // PerspectiveCamera with the same vertical field of view and aspect w / h.
  const camera = new THREE.PerspectiveCamera(Number(q.get("fovy")), width / height, 0.01, 100);
  c2w.decompose(camera.position, camera.quaternion, camera.scale);
  camera.updateMatrixWorld(true);
  return camera;
}

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(resolve));
}

async function main() {
  const canvas = document.createElement("canvas");
  document.body.appendChild(canvas);
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
  renderer.setPixelRatio(1);
  renderer.setSize(width, height, false);
  const scene = new THREE.Scene();
  // Our rasteriser adds gsplat's 0.3 px low-pass to every 2D covariance without an opacity correction:
  // in Spark that is preBlurAmount 0.3 and blurAmount 0.
  const spark = new SparkRenderer({ renderer, preBlurAmount: 0.3, blurAmount: 0.0 });
  scene.add(spark);
  const mesh = new SplatMesh({ url: q.get("file") });
  scene.add(mesh);
  await mesh.initialized;
  const camera = threeCamera();
  const frames = {};
  for (const [name, colour] of [["black", 0x000000], ["white", 0xffffff]]) {
    renderer.setClearColor(colour, 1);
    // Spark sorts in a worker: draw until a sort has finished for this view and nothing is pending.
    let settled = 0;
    for (let i = 0; i < 600 && settled < 3; i++) {
      renderer.render(scene, camera);
      await nextFrame();
      settled = !spark.sorting && !spark.sortDirty && spark.activeSplats > 0 ? settled + 1 : 0;
    }
    renderer.render(scene, camera);
    frames[name] = canvas.toDataURL("image/png");
  }
  window.result = { ...frames, numSplats: mesh.numSplats, activeSplats: spark.activeSplats };
}

main().catch((e) => { window.failure = String(e && e.stack || e); });
