import http from 'node:http';
const [host, port, total, inflight] = [process.argv[2], +process.argv[3], +process.argv[4], +process.argv[5]];
const agent = new http.Agent({ keepAlive: true, maxSockets: inflight });
let sent = 0, done = 0; const codes = {};
const start = Date.now();
await new Promise((resolve) => {
  const next = () => {
    if (sent >= total) { if (done >= total) resolve(); return; }
    sent++;
    const xff = process.env.XFF ? { 'x-forwarded-for': `10.${(sent>>16)&255}.${(sent>>8)&255}.${sent&255}` } : {};
    const req = http.get({ host, port, path: '/socket.io/?EIO=4&transport=polling', agent, headers: xff }, (res) => {
      codes[res.statusCode] = (codes[res.statusCode] || 0) + 1; res.resume();
      res.on('end', () => { done++; next(); });
    });
    req.on('error', () => { codes.err = (codes.err || 0) + 1; done++; next(); });
  };
  for (let i = 0; i < inflight; i++) next();
});
console.log(JSON.stringify({ total, ms: Date.now() - start, codes }));
