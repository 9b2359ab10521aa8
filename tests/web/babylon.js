// Draw one KHR_gaussian_splatting .glb with Babylon.js (see babylon.html).
const q = new URLSearchParams(location.search);
const width = Number(q.get("w"));
const height = Number(q.get("h"));
const vec = (name) => new BABYLON.Vector3(...q.get(name).split(",").map(Number));

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(resolve));
}

async function main() {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  document.body.appendChild(canvas);
  const engine = new BABYLON.Engine(canvas, false, { preserveDrawingBuffer: true, antialias: false });
  engine.setHardwareScalingLevel(1);
  const scene = new BABYLON.Scene(engine);
  // glTF is right-handed: with a right-handed scene the loader adds no mirroring root, and eye / target are
  // plain glTF coordinates.
  scene.useRightHandedSystem = true;
  await BABYLON.SceneLoader.ImportMeshAsync("", "", q.get("file"), scene);
  const splats = scene.meshes.filter((m) => m instanceof BABYLON.GaussianSplattingMesh);
  if (splats.length === 0) throw new Error("Babylon found no Gaussian splats in the file");
  const camera = new BABYLON.UniversalCamera("camera", vec("eye"), scene);
  camera.fov = (Number(q.get("fovy")) * Math.PI) / 180; // vertical (Babylon's default fovMode)
  camera.minZ = 0.01;
  camera.maxZ = 100;
  camera.setTarget(vec("target")); // up stays Babylon's default, +Y
  scene.activeCamera = camera;
  const frames = {};
  for (const [name, c] of [["black", 0], ["white", 1]]) {
    scene.clearColor = new BABYLON.Color4(c, c, c, 1);
    // Babylon sorts the splats in a worker: draw frames until it has sorted for this view
    for (let i = 0; i < 90; i++) {
      scene.render();
      await nextFrame();
    }
    scene.render();
    frames[name] = canvas.toDataURL("image/png");
  }
  window.result = { ...frames, numSplats: splats.reduce((n, m) => n + (m.splatCount || 0), 0) };
}

main().catch((e) => { window.failure = String((e && e.stack) || e); });
