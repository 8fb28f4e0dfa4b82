// MQTT listeners: plain TCP, TLS, and WebSocket (ws + createWebSocketStream; the old
// websocket-stream package is unmaintained and pulls in ws 3).
import { readFileSync } from 'node:fs'
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { createServer as createTlsServer, type TlsOptions } from 'node:tls'
import { WebSocketServer, createWebSocketStream } from 'ws'
import type { Config } from '../schemas/config.js'
import { tlsListenerEnabled } from '../schemas/config.js'
import { connackFirst } from './connack-first.js'
import type { Logger } from './logger.js'

export type ListenerName = 'tcp' | 'tls' | 'ws'
type Handle = (stream: Duplex, req?: IncomingMessage) => unknown

// Which listener each connection came through, keyed by the stream Aedes keeps as client.conn:
// the core's per-listener metrics read it (node.ts). Weak, so closed connections leave nothing.
const listenerOfStream = new WeakMap<object, ListenerName>()

/** The listener a client's connection (Aedes client.conn) arrived on. */
export function listenerOf(conn: unknown): ListenerName | undefined {
  return typeof conn === 'object' && conn !== null ? listenerOfStream.get(conn) : undefined
}

export interface MqttListener {
  name: ListenerName
  /** Port actually bound (differs from the configured one when that is 0). */
  port: number
  host: string
  /** Stop accepting new connections. */
  stopAccepting(): void
  /** Destroy connections that never became MQTT clients, then wait for the server to close. */
  close(): Promise<void>
}

function tlsOptions(files: { certFile?: string | undefined; keyFile?: string | undefined; caFile?: string | undefined; passphrase?: string | undefined }): TlsOptions {
  const ca = files.caFile ? readFileSync(files.caFile) : undefined
  return {
    cert: readFileSync(files.certFile!),
    key: readFileSync(files.keyFile!),
    passphrase: files.passphrase,
    // With a CA configured the listener does mutual TLS: clients must present a certificate it signed.
    ca,
    requestCert: Boolean(ca),
    rejectUnauthorized: Boolean(ca),
    minVersion: 'TLSv1.2'
  }
}

function listen(server: NetServer | HttpServer, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err)
    server.once('error', onError)
    server.listen(port, host, () => {
      server.off('error', onError)
      resolve(server.address() as AddressInfo)
    })
  })
}

function trackSockets(server: NetServer | HttpServer): Set<Socket> {
  const sockets = new Set<Socket>()
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  return sockets
}

function closer(server: NetServer | HttpServer, sockets: Set<Socket>): Pick<MqttListener, 'stopAccepting' | 'close'> {
  let closed: Promise<void> | undefined
  const stopAccepting = () => {
    closed ??= new Promise((resolve) => server.close(() => resolve()))
  }
  return {
    stopAccepting,
    close: async () => {
      stopAccepting()
      for (const s of sockets) s.destroy()
      await closed
    }
  }
}

async function startTcp(config: Config, handle: Handle): Promise<MqttListener> {
  const { host, port, noDelay } = config.listeners.tcp
  // No Nagle by default: an answer written just after a PUBACK would otherwise wait for the
  // client's delayed ACK of that PUBACK (~40 ms per RPC round trip, measured by the reconnect-storm
  // benchmark). EMQX and VerneMQ also default to nodelay. (http.createServer, under WebSocket, does.)
  const server = createNetServer({ noDelay }, (socket) => handle(socket))
  const sockets = trackSockets(server)
  const addr = await listen(server, host, port)
  return { name: 'tcp', host, port: addr.port, ...closer(server, sockets) }
}

async function startTls(config: Config, handle: Handle): Promise<MqttListener> {
  const l = config.listeners.tls
  const server = createTlsServer(tlsOptions(l), (socket) => handle(socket))
  const sockets = new Set<Socket>()
  server.on('secureConnection', (socket: Socket) => {
    socket.setNoDelay(l.noDelay) // as on the TCP listener
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  const addr = await listen(server, l.host, l.port)
  return { name: 'tls', host: l.host, port: addr.port, ...closer(server, sockets) }
}

async function startWs(config: Config, handle: Handle, log: Logger): Promise<MqttListener> {
  const l = config.listeners.ws
  const plain = (_req: IncomingMessage, res: ServerResponse) => {
    res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket' })
    res.end(`MQTT over WebSocket: connect with a WebSocket client to ${l.path}\n`)
  }
  const server = l.certFile ? createHttpsServer(tlsOptions(l), plain) : createHttpServer(plain)
  const sockets = trackSockets(server)
  const wss = new WebSocketServer({
    server,
    path: l.path,
    // MQTT over WebSocket names the subprotocol "mqtt" (or "mqttv3.1" for old clients).
    handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false)
  })
  wss.on('connection', (ws, req) => {
    const stream = createWebSocketStream(ws)
    stream.on('error', (err) => log.debug({ err: err.message }, 'websocket stream error'))
    handle(stream, req)
  })
  wss.on('error', (err) => log.warn({ err }, 'websocket server error'))
  const addr = await listen(server, l.host, l.port)
  const base = closer(server, sockets)
  return {
    name: 'ws',
    host: l.host,
    port: addr.port,
    stopAccepting: base.stopAccepting,
    close: async () => {
      base.stopAccepting()
      for (const client of wss.clients) client.terminate()
      await new Promise<void>((resolve) => wss.close(() => resolve()))
      await base.close()
    }
  }
}

/** Starts every enabled MQTT listener; if one fails to bind, those already started are closed. */
export async function startMqttListeners(config: Config, aedesHandle: Handle, log: Logger): Promise<MqttListener[]> {
  // Every transport: Aedes may write a PUBLISH before the CONNACK (broker/connack-first.ts).
  const handleFor =
    (name: ListenerName): Handle =>
    (stream, req) => {
      const s = connackFirst(stream)
      listenerOfStream.set(s, name)
      return aedesHandle(s, req)
    }
  const started: MqttListener[] = []
  const wanted: Array<[ListenerName, () => Promise<MqttListener>]> = []
  if (config.listeners.tcp.enabled) wanted.push(['tcp', () => startTcp(config, handleFor('tcp'))])
  if (tlsListenerEnabled(config)) wanted.push(['tls', () => startTls(config, handleFor('tls'))])
  if (config.listeners.ws.enabled) wanted.push(['ws', () => startWs(config, handleFor('ws'), log)])
  try {
    for (const [name, start] of wanted) {
      const l = await start().catch((err: Error) => {
        throw new Error(`cannot start the ${name} listener: ${err.message}`)
      })
      started.push(l)
      log.info({ listener: l.name, host: l.host, port: l.port }, 'listening')
    }
  } catch (err) {
    await Promise.allSettled(started.map((l) => l.close()))
    throw err
  }
  return started
}
