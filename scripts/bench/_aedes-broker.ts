// Plain Aedes for the relay benchmarks: the broker as its README starts it (in-memory persistence and
// emitter, no hooks, no plugins), on 127.0.0.1 and a port the OS picks, printed as one JSON line.
// Its own process, so its CPU and memory are measured like any other target's. Stops on SIGTERM.
import { Aedes } from 'aedes'
import { createServer } from 'node:net'

const broker = await Aedes.createBroker()
const server = createServer((socket) => broker.handle(socket))
server.listen(0, '127.0.0.1', () => {
  const address = server.address()
  process.stdout.write(`${JSON.stringify({ ready: true, port: typeof address === 'object' && address ? address.port : 0 })}\n`)
})
process.once('SIGTERM', () => {
  server.close()
  broker.close(() => process.exit(0))
})
