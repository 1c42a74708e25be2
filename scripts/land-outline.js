// The dashboard's land outline (crates/control/src/ui/land.svg): run from a scratch directory after
// `npm install world-atlas topojson-client`; it writes land-path.txt (the path that file holds) and
// check.svg beside itself.
// Builds a simplified world land outline as one SVG path "d" string.
// Data: Natural Earth 1:110m land (public domain) via world-atlas (ISC).
// Projection: equirectangular onto 1000x500: x=(lon+180)/360*1000, y=(90-lat)/180*500
const fs = require('fs');
const topojson = require('topojson-client');
const topo = require('world-atlas/land-110m.json');

const MIN_AREA = 4;    // drop rings with projected area below this (sq units)
const TOL = 0.6;       // Douglas-Peucker tolerance (units)
const MIN_LAT = -60;   // drop Antarctica (rings entirely south of this)

const land = topojson.feature(topo, topo.objects.land);
const polys = land.type === 'FeatureCollection'
  ? land.features.flatMap(f => geomPolys(f.geometry))
  : geomPolys(land.geometry || land);
function geomPolys(g) {
  if (g.type === 'Polygon') return [g.coordinates];
  if (g.type === 'MultiPolygon') return g.coordinates;
  if (g.type === 'GeometryCollection') return g.geometries.flatMap(geomPolys);
  return [];
}

// Antimeridian: world-atlas rings (Fiji, Chukotka, Wrangel I.) jump between
// +180 and -180. Unwrap longitudes so each ring is continuous, then clip copies
// shifted by -360/0/+360 to [-180,180] (Sutherland-Hodgman on two half-planes).
function unwrap(ring) {
  const out = [ring[0].slice()];
  for (let i = 1; i < ring.length; i++) {
    let lon = ring[i][0]; const prev = out[i - 1][0];
    while (lon - prev > 180) lon -= 360;
    while (lon - prev < -180) lon += 360;
    out.push([lon, ring[i][1]]);
  }
  return out;
}
function clipHalf(pts, inside, cut) {
  const out = [];
  for (let i = 0; i < pts.length; i++) {
    const cur = pts[i], prev = pts[(i + pts.length - 1) % pts.length];
    const ci = inside(cur), pi = inside(prev);
    if (ci) { if (!pi) out.push(cut(prev, cur)); out.push(cur); }
    else if (pi) out.push(cut(prev, cur));
  }
  return out;
}
const cutAt = X => (a, b) => { const t = (X - a[0]) / (b[0] - a[0]); return [X, a[1] + t * (b[1] - a[1])]; };
function splitAntimeridian(ring) {
  const u = unwrap(ring);
  const f = u[0], l = u[u.length - 1];
  if (f[0] === l[0] && f[1] === l[1]) u.pop();
  const mn = Math.min(...u.map(p => p[0])), mx = Math.max(...u.map(p => p[0]));
  if (mn >= -180 && mx <= 180) return [u];
  const pieces = [];
  for (const sh of [-360, 0, 360]) {
    let p = u.map(([x, y]) => [x + sh, y]);
    p = clipHalf(p, q => q[0] >= -180, cutAt(-180));
    p = clipHalf(p, q => q[0] <= 180, cutAt(180));
    if (p.length >= 3) pieces.push(p);
  }
  return pieces;
}

const proj = ([lon, lat]) => [(lon + 180) / 360 * 1000, (90 - lat) / 180 * 500];
const area = r => { let a = 0; for (let i = 0, j = r.length - 1; i < r.length; j = i++) a += r[j][0] * r[i][1] - r[i][0] * r[j][1]; return Math.abs(a / 2); };

function dp(pts, tol) {
  const keep = new Uint8Array(pts.length); keep[0] = keep[pts.length - 1] = 1;
  const stack = [[0, pts.length - 1]];
  while (stack.length) {
    const [a, b] = stack.pop();
    const [ax, ay] = pts[a], [bx, by] = pts[b];
    const dx = bx - ax, dy = by - ay, L2 = dx * dx + dy * dy;
    let maxD = -1, idx = -1;
    for (let i = a + 1; i < b; i++) {
      const [px, py] = pts[i];
      let d;
      if (L2 === 0) d = Math.hypot(px - ax, py - ay);
      else {
        let t = ((px - ax) * dx + (py - ay) * dy) / L2; t = Math.max(0, Math.min(1, t));
        d = Math.hypot(px - ax - t * dx, py - ay - t * dy);
      }
      if (d > maxD) { maxD = d; idx = i; }
    }
    if (maxD > tol) { keep[idx] = 1; stack.push([a, idx], [idx, b]); }
  }
  return pts.filter((_, i) => keep[i]);
}

// Simplify a closed ring: split at the point farthest from the first point so DP
// works on two open halves (avoids a degenerate zero-length base segment).
function simplifyRing(ring) {
  let pts = ring.slice();
  const f = pts[0], l = pts[pts.length - 1];
  if (f[0] === l[0] && f[1] === l[1]) pts.pop();
  if (pts.length < 4) return pts;
  let far = 0, fd = -1;
  pts.forEach((p, i) => { const d = Math.hypot(p[0] - pts[0][0], p[1] - pts[0][1]); if (d > fd) { fd = d; far = i; } });
  const h1 = dp(pts.slice(0, far + 1), TOL);
  const h2 = dp(pts.slice(far).concat([pts[0]]), TOL);
  return h1.concat(h2.slice(1, -1));
}

const r1 = v => Math.round(v * 10);   // integer tenths to avoid float drift
const fmt = t => { const s = (t / 10).toString(); return s.replace(/^0\./, '.').replace(/^-0\./, '-.'); };
// join numbers, omitting separators where a '-' sign suffices
const join = nums => nums.reduce((s, n, i) => s + (i && !n.startsWith('-') ? ' ' : '') + n, '');

let d = '', rings = 0, dropped = 0, pointsOut = 0;
for (const poly of polys) {
  for (const ring of poly) {
    if (ring.every(([, lat]) => lat < MIN_LAT)) { dropped++; continue; }
   for (const piece of splitAntimeridian(ring)) {
    const p = piece.map(proj);
    if (area(p) < MIN_AREA) { dropped++; continue; }
    let s = simplifyRing(p).map(([x, y]) => [r1(x), r1(y)]);
    s = s.filter((q, i) => i === 0 || q[0] !== s[i - 1][0] || q[1] !== s[i - 1][1]);
    if (s.length < 3) { dropped++; continue; }
    let cmd = 'M' + join([fmt(s[0][0]), fmt(s[0][1])]) + 'l';
    const rel = [];
    for (let i = 1; i < s.length; i++) rel.push(fmt(s[i][0] - s[i - 1][0]), fmt(s[i][1] - s[i - 1][1]));
    d += cmd + join(rel) + 'z';
    rings++; pointsOut += s.length;
   }
  }
}
fs.writeFileSync(__dirname + '/land-path.txt', d);
fs.writeFileSync(__dirname + '/check.svg',
  `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1000 500" width="1000" height="500">` +
  `<rect width="1000" height="500" fill="#fff"/><path fill="#999" stroke="#333" stroke-width=".3" d="${d}"/></svg>\n`);
console.log({ bytes: Buffer.byteLength(d), rings, dropped, pointsOut, tol: TOL, minArea: MIN_AREA });
