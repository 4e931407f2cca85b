/// The live dashboard: one self-contained page (nothing fetched from anywhere else) that is a
/// Foxglove WebSocket client of the server it came from. It draws the agents, their coverage and
/// the fused boxes on a bird's-eye canvas and keeps a per-agent table. `?token=…` in the page's
/// address is passed on to the WebSocket.
enum Dashboard {
    static let html = #"""
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>SlimSplit live</title>
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <style>
        body{margin:0;font:14px system-ui,sans-serif;background:#111;color:#ddd;display:flex;height:100vh}
        #view{flex:1;position:relative} canvas{width:100%;height:100%;display:block}
        #side{width:660px;padding:12px;overflow:auto;background:#1a1a1a}
        h1{font-size:18px;margin:0 0 8px} .dim{color:#888}
        table{border-collapse:collapse;width:100%;margin-top:8px} th,td{padding:4px 6px;text-align:right;border-bottom:1px solid #333}
        th:first-child,td:first-child{text-align:left} .miss{color:#f66}
        #status{position:absolute;left:10px;top:8px;background:#0008;padding:4px 8px;border-radius:4px}
        </style></head>
        <body><div id="view"><canvas id="bev"></canvas><div id="status">connecting…</div></div>
        <div id="side"><h1>SlimSplit live</h1>
        <div class="dim">fused boxes: <span id="nboxes">0</span> · agents: <span id="nagents">0</span> · deadline <span id="deadline">-</span> ms</div>
        <table><thead><tr><th>agent</th><th>width</th><th>bits</th><th>KB/frame</th><th>frames</th><th>latency p50 ms</th><th>p99 ms</th><th>deadline misses</th><th>rejected</th></tr></thead>
        <tbody id="agents"></tbody></table>
        <p class="dim">Latency: capture to Result, as the server measures it. Same data over the Foxglove WebSocket protocol:
        open Foxglove, "Open connection", ws://this-host:port/.</p></div>
        <script>
        const q = new URLSearchParams(location.search), token = q.get('token');
        const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/' + (token ? '?token=' + encodeURIComponent(token) : '');
        const topics = {}, boxes = {}; let agents = [], deadline = null;
        const $ = id => document.getElementById(id);
        function connect() {
          const ws = new WebSocket(url, ['foxglove.websocket.v1']);
          ws.binaryType = 'arraybuffer';
          ws.onopen = () => $('status').textContent = 'live';
          ws.onclose = () => { $('status').textContent = 'disconnected, retrying…'; setTimeout(connect, 1000); };
          ws.onmessage = ev => {
            if (typeof ev.data === 'string') {
              const m = JSON.parse(ev.data);
              if (m.op === 'advertise') {
                const subs = m.channels.map((c, i) => { topics[i + 1] = c.topic; return {id: i + 1, channelId: c.id}; });
                ws.send(JSON.stringify({op: 'subscribe', subscriptions: subs}));
              } else if (m.op === 'status') { $('status').textContent = m.message; }
              return;
            }
            const dv = new DataView(ev.data);
            if (dv.getUint8(0) !== 1) return;
            const topic = topics[dv.getUint32(1, true)];
            const msg = JSON.parse(new TextDecoder().decode(new Uint8Array(ev.data, 13)));
            if (topic === '/fusion/detections') {
              for (const e of msg.entities) boxes[e.id] = {cubes: e.cubes, t: performance.now()};
            } else if (topic === '/agents/state') {
              agents = msg.agents; deadline = msg.deadline_ms; table();
            }
          };
        }
        const f = (v, d) => v === undefined ? '-' : Number(v).toFixed(d);
        function table() {
          $('nagents').textContent = agents.length; $('deadline').textContent = deadline;
          $('agents').innerHTML = agents.map(a => `<tr><td>${a.id}</td><td>${f(a.width, 2)}</td><td>${a.bits}</td><td>${f(a.kb_per_frame, 2)}</td><td>${a.frames}</td><td>${f(a.latency_p50_ms, 1)}</td><td>${f(a.latency_p99_ms, 1)}</td><td class="${a.deadline_misses ? 'miss' : ''}">${a.deadline_misses ?? '-'}</td><td>${a.rejected}</td></tr>`).join('');
        }
        const colors = ['#4cc3ff', '#7dff7a', '#ffd84c', '#ff7ad9', '#b48cff', '#ff9f5a'];
        function draw() {
          const c = $('bev'), r = c.getBoundingClientRect();
          c.width = r.width * devicePixelRatio; c.height = r.height * devicePixelRatio;
          const g = c.getContext('2d'); g.scale(devicePixelRatio, devicePixelRatio);
          g.fillStyle = '#111'; g.fillRect(0, 0, r.width, r.height);
          const placed = agents.filter(a => a.x !== undefined);
          let x0 = -40, x1 = 40, y0 = -40, y1 = 40;
          if (placed.length) {
            const R = a => a.range_m * (Math.abs(Math.cos(a.yaw)) + Math.abs(Math.sin(a.yaw)));
            x0 = Math.min(...placed.map(a => a.x - R(a))); x1 = Math.max(...placed.map(a => a.x + R(a)));
            y0 = Math.min(...placed.map(a => a.y - R(a))); y1 = Math.max(...placed.map(a => a.y + R(a)));
          }
          const s = Math.min(r.width / (x1 - x0), r.height / (y1 - y0)) * 0.95;
          const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
          const P = (x, y) => [r.width / 2 + (x - cx) * s, r.height / 2 - (y - cy) * s];
          g.strokeStyle = '#222'; g.lineWidth = 1;
          for (let x = Math.floor(x0 / 10) * 10; x <= x1; x += 10) { const [a] = P(x, 0); g.beginPath(); g.moveTo(a, 0); g.lineTo(a, r.height); g.stroke(); }
          for (let y = Math.floor(y0 / 10) * 10; y <= y1; y += 10) { const [, b] = P(0, y); g.beginPath(); g.moveTo(0, b); g.lineTo(r.width, b); g.stroke(); }
          placed.forEach((a, i) => {
            const [px, py] = P(a.x, a.y), col = colors[i % colors.length];
            g.save(); g.translate(px, py); g.rotate(-a.yaw); g.fillStyle = col + '18'; g.strokeStyle = col + '66';
            g.beginPath(); g.rect(-a.range_m * s, -a.range_m * s, 2 * a.range_m * s, 2 * a.range_m * s); g.fill(); g.stroke(); g.restore();
          });
          const now = performance.now(); let n = 0;
          g.strokeStyle = '#ff8c1a'; g.lineWidth = 2;
          for (const [id, e] of Object.entries(boxes)) {
            if (now - e.t > 1500) { delete boxes[id]; continue; }
            for (const b of e.cubes) {
              const o = b.pose.orientation, yaw = 2 * Math.atan2(o.z, o.w), [px, py] = P(b.pose.position.x, b.pose.position.y);
              g.save(); g.translate(px, py); g.rotate(-yaw);
              g.fillStyle = `rgba(255,140,26,${0.25 * b.color.a})`;
              g.fillRect(-b.size.x * s / 2, -b.size.y * s / 2, b.size.x * s, b.size.y * s);
              g.strokeRect(-b.size.x * s / 2, -b.size.y * s / 2, b.size.x * s, b.size.y * s); g.restore(); n++;
            }
          }
          $('nboxes').textContent = n;
          placed.forEach((a, i) => {
            const [px, py] = P(a.x, a.y);
            g.save(); g.translate(px, py); g.rotate(-a.yaw); g.fillStyle = colors[i % colors.length];
            g.beginPath(); g.moveTo(12, 0); g.lineTo(-8, 7); g.lineTo(-8, -7); g.closePath(); g.fill(); g.restore();
            g.fillStyle = '#eee'; g.font = '13px system-ui'; g.fillText(a.id, px + 10, py - 10);
          });
          requestAnimationFrame(draw);
        }
        connect(); requestAnimationFrame(draw);
        </script></body></html>
        """#
}
