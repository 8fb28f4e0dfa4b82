// The Parley wire protocol (MQTT 3.1.1, JSON payloads): topics and every payload schema.
// Client → server payloads are strict (an unknown field is refused: the server stamps sender,
// ids and times itself). Server → client payloads are open: fields may be added, and clients
// must ignore the ones they do not know.
// docs/protocol.md explains it; `npm run schemas` writes these schemas as JSON Schema for
// client developers (schemas/json/).
import { z } from 'zod'
import { Id } from './identity.js'

/** Upper bound of a text body, in characters. */
export const MAX_BODY_CHARS = 16_384

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

/** Topics a device publishes to (client → server). */
export const UP = {
  /** One-to-one message to a user: s/dm/{userId}. */
  dm: (peer: string) => `s/dm/${peer}`,
  /** Message to a group the sender belongs to: s/g/{groupId}. */
  group: (groupId: string) => `s/g/${groupId}`,
  /** Read marker: s/read. */
  read: 's/read',
  /** Delivered marker ("this device has everything up to seq"), for devices whose PUBACKs the server cannot see: s/delivered. */
  delivered: 's/delivered',
  /** Typing indicator: s/typing/dm/{userId} or s/typing/g/{groupId}. */
  typing: (kind: 'dm' | 'g', id: string) => `s/typing/${kind}/${id}`,
  /** Request to the server (correlation id in the payload): s/rpc. */
  rpc: 's/rpc'
} as const

/** Topics the server publishes to (server → device); a device subscribes once to u/{its userId}/#. */
export const DOWN = {
  /** Every filter a device may subscribe to lies under this. */
  userTree: (userId: string) => `u/${userId}/#`,
  /** Chat messages for the user, and carbons of what the user sent from another device. */
  messages: (userId: string) => `u/${userId}/m`,
  /** Delivered and read receipts for messages the user sent. */
  receipts: (userId: string) => `u/${userId}/r`,
  /** Events: presence, typing, read markers of the user's other devices, group changes. */
  events: (userId: string) => `u/${userId}/e`,
  /** Responses to one device's requests: forwarded to that device only. */
  responses: (userId: string, deviceId: string) => `u/${userId}/d/${deviceId}/res`,
  /** Errors for one device (its rejected publishes): forwarded to that device only. */
  errors: (userId: string, deviceId: string) => `u/${userId}/d/${deviceId}/err`
} as const

/** What a publish topic means, or undefined for a topic outside the protocol. */
export type UpTopic =
  | { kind: 'dm'; peer: string }
  | { kind: 'group'; groupId: string }
  | { kind: 'read' }
  | { kind: 'delivered' }
  | { kind: 'typing'; conversation: ConversationRef }
  | { kind: 'rpc' }

const isId = (s: string | undefined): s is string => s !== undefined && Id.safeParse(s).success

export function parseUpTopic(topic: string): UpTopic | undefined {
  const l = topic.split('/')
  if (l[0] !== 's') return undefined
  if (l.length === 3 && l[1] === 'dm' && isId(l[2])) return { kind: 'dm', peer: l[2] }
  if (l.length === 3 && l[1] === 'g' && isId(l[2])) return { kind: 'group', groupId: l[2] }
  if (l.length === 2 && l[1] === 'read') return { kind: 'read' }
  if (l.length === 2 && l[1] === 'delivered') return { kind: 'delivered' }
  if (l.length === 2 && l[1] === 'rpc') return { kind: 'rpc' }
  if (l.length === 4 && l[1] === 'typing' && (l[2] === 'dm' || l[2] === 'g') && isId(l[3])) {
    return { kind: 'typing', conversation: { kind: l[2] === 'dm' ? 'dm' : 'group', id: l[3] } }
  }
  return undefined
}

/** The user and, for device-scoped topics, the device a server → device topic is addressed to. */
export function parseDownTopic(topic: string): { userId: string; deviceId?: string } | undefined {
  const l = topic.split('/')
  if (l[0] !== 'u' || !isId(l[1])) return undefined
  if (l[2] === 'd') return isId(l[3]) ? { userId: l[1], deviceId: l[3] } : undefined
  return { userId: l[1] }
}

// ---------------------------------------------------------------------------------------------
// Payloads: client → server
// ---------------------------------------------------------------------------------------------

/** A conversation: one-to-one with a user (from the reader's side: the other user), or a group. */
export const ConversationRef = z
  .object({
    kind: z.enum(['dm', 'group']),
    id: Id.describe('The other user (dm) or the group id')
  })
  .strict()
export type ConversationRef = z.infer<typeof ConversationRef>

/** Server message ids (stamped by the server, referenced by replies, edits and deletes). */
export const MessageId = z.string().regex(/^[0-9a-z]{9}[0-9a-f]{16}$/, { error: 'expected a server message id' })

/**
 * A reference to an uploaded media object (the media plugin hands out the id and the upload URL);
 * the server forwards it as given. With e2e, the keys to decrypt travel in the (encrypted) body.
 */
export const MediaRef = z
  .object({
    id: z.string().regex(/^[A-Za-z0-9._-]{1,128}$/, { error: 'expected a media id' }).describe('Media object id'),
    mime: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9.+-]*\/[A-Za-z0-9][A-Za-z0-9.+-]*$/, { error: 'expected a MIME type such as image/jpeg' }).max(127),
    size: z.number().int().min(0).describe('Bytes'),
    name: z.string().min(1).max(255).optional().describe('File name to show'),
    width: z.number().int().positive().max(100_000).optional(),
    height: z.number().int().positive().max(100_000).optional(),
    durationMs: z.number().int().min(0).optional().describe('Audio and video length'),
    thumbnail: z.string().max(8192).optional().describe('A tiny preview, base64, at most 8 KiB')
  })
  .strict()
export type MediaRef = z.infer<typeof MediaRef>

const cmid = Id.describe('Client message id, unique per sender: a retry with the same cmid is not stored twice')
const e2e = z.boolean().default(false).describe('The body is end-to-end encrypted ciphertext: stored and forwarded unread, no push preview')
const replyTo = MessageId.optional().describe('Server id of the message this replies to')

/**
 * A message a device sends on s/dm/{userId} or s/g/{groupId}, by `type` (text when absent). The
 * server stamps sender, id, seq and time. Edits and deletes are new messages that reference the
 * original (`ref`); system notices come from the server only.
 */
export const SendMessage = z.discriminatedUnion('type', [
  z.object({ type: z.literal('text').default('text'), cmid, body: z.string().min(1).max(MAX_BODY_CHARS).describe('The text'), replyTo, e2e }).strict(),
  z
    .object({ type: z.literal('media'), cmid, media: MediaRef, body: z.string().min(1).max(MAX_BODY_CHARS).optional().describe('Caption'), replyTo, e2e })
    .strict(),
  z
    .object({
      type: z.literal('edit'),
      cmid,
      ref: MessageId.describe('Server id of the sender\'s own message being edited'),
      body: z.string().min(1).max(MAX_BODY_CHARS).describe('The new text'),
      e2e
    })
    .strict(),
  z.object({ type: z.literal('delete'), cmid, ref: MessageId.describe('Server id of the sender\'s own message to delete for everyone') }).strict()
])
export type SendMessage = z.infer<typeof SendMessage>
/** The message kinds, as stored and delivered. */
export const MessageType = z.enum(['text', 'media', 'edit', 'delete', 'system'])
export type MessageType = z.infer<typeof MessageType>

/** s/read: "I have read this conversation up to seq". */
export const ReadMarker = z
  .object({
    conversation: ConversationRef,
    seq: z.number().int().min(0).describe('Highest server sequence number read')
  })
  .strict()
export type ReadMarker = z.infer<typeof ReadMarker>

/** s/delivered: "this device has every message of this conversation up to seq" (send it once caught up). */
export const DeliveredMarker = z
  .object({
    conversation: ConversationRef,
    seq: z.number().int().min(0).describe('Highest server sequence number this device has, with none missing below it')
  })
  .strict()
export type DeliveredMarker = z.infer<typeof DeliveredMarker>

/** s/typing/dm/{userId} or s/typing/g/{groupId} (QoS 0, never stored). */
export const Typing = z
  .object({
    state: z.enum(['typing', 'paused'])
  })
  .strict()
export type Typing = z.infer<typeof Typing>

/** s/rpc: a request; the answer comes on u/{userId}/d/{deviceId}/res with the same id. */
export const RpcRequest = z
  .object({
    id: Id.describe('Correlation id chosen by the device'),
    method: z.string().regex(/^[a-z][a-z0-9_.]{0,63}$/, { error: 'expected a method name such as ping or groups.create' }),
    params: z.record(z.string(), z.unknown()).default({})
  })
  .strict()
export type RpcRequest = z.infer<typeof RpcRequest>

// ---------------------------------------------------------------------------------------------
// Payloads: server → device
// ---------------------------------------------------------------------------------------------

/** A system notice: a change in a group, recorded in the conversation so every device shows it in place. */
export const Notice = z
  .object({
    change: z.enum(['created', 'renamed', 'added', 'removed', 'left', 'promoted']),
    by: Id.describe('Who made the change'),
    users: z.array(Id).optional(),
    name: z.string().optional()
  })
  .loose()
export type Notice = z.infer<typeof Notice>

/** u/{userId}/m: a stored message, as every recipient device (and the sender's other devices) see it. */
export const MessageEnvelope = z
  .object({
    id: z.string().min(1).max(64).describe('Server message id'),
    seq: z.number().int().min(1).describe('Per-conversation sequence number'),
    conversation: ConversationRef.loose(),
    from: z.object({ user: Id, device: Id }).loose().describe('Stamped by the server from the session (device "server" for system notices)'),
    cmid: Id,
    type: MessageType,
    body: z.string().max(MAX_BODY_CHARS).optional().describe('text, edit: the text; media: the caption'),
    media: z.object({ id: z.string(), mime: z.string(), size: z.number() }).loose().optional(),
    ref: z.string().optional().describe('edit, delete: the server id of the original message'),
    notice: Notice.optional().describe('system: what changed'),
    deleted: z.boolean().optional().describe('The sender deleted this message for everyone: its content is gone'),
    replyTo: z.string().optional(),
    e2e: z.boolean(),
    ts: z.number().int().describe('Server time, epoch milliseconds')
  })
  .loose()
export type MessageEnvelope = z.infer<typeof MessageEnvelope>

/** u/{userId}/r: receipts for messages the user sent. */
export const Receipt = z.discriminatedUnion('kind', [
  z
    .object({
      kind: z.enum(['delivered', 'read']),
      conversation: ConversationRef.loose().describe('One-to-one: the conversation as the sender sees it'),
      upToSeq: z.number().int().min(0).describe('Every message of this conversation up to this seq'),
      by: Id.describe('The user who received or read'),
      ts: z.number().int()
    })
    .loose(),
  z
    .object({
      kind: z.literal('group'),
      conversation: ConversationRef.loose(),
      messages: z
        .array(
          z
            .object({
              seq: z.number().int().min(1),
              id: z.string(),
              delivered: z.number().int().min(0).describe('Members (other than the sender) who have it'),
              read: z.number().int().min(0).describe('Members who read it (those sharing read receipts)'),
              of: z.number().int().min(0).describe('Members other than the sender')
            })
            .loose()
        )
        .describe('Counts only grow: keep the highest seen'),
      ts: z.number().int()
    })
    .loose()
])
export type Receipt = z.infer<typeof Receipt>

/** u/{userId}/e: events. */
export const Event = z.discriminatedUnion('type', [
  z
    .object({
      type: z.literal('presence'),
      user: Id,
      online: z.boolean().optional().describe('Absent when the user does not show their online status to the reader'),
      lastSeen: z.number().int().optional().describe('Offline, and shown to the reader: when the last device left, epoch ms'),
      version: z.number().int().min(0).describe('Grows with every change of this user: keep the event with the highest')
    })
    .loose(),
  z
    .object({
      type: z.literal('typing'),
      conversation: ConversationRef.loose(),
      user: Id,
      state: z.enum(['typing', 'paused']),
      expiresInMs: z.number().int().positive().describe('Show "typing" at most this long unless a newer event renews it')
    })
    .loose(),
  z.object({ type: z.literal('read'), conversation: ConversationRef.loose(), seq: z.number().int().min(0) }).loose(),
  z
    .object({
      type: z.literal('group'),
      group: Id,
      change: z.enum(['created', 'renamed', 'added', 'removed', 'left', 'promoted']),
      by: Id.describe('Who made the change'),
      users: z.array(Id).optional().describe('created: every member; added, removed, left, promoted: who'),
      name: z.string().optional().describe('The group name (created, renamed)')
    })
    .loose()
])
export type Event = z.infer<typeof Event>

/** Error codes a device can receive, on its error topic or in an RPC response. */
export const ErrorCode = z.enum([
  'unknown_topic',
  'forbidden',
  'not_a_member',
  'invalid_payload',
  'payload_too_large',
  'rate_limited',
  'unknown_method',
  'unknown_message',
  'too_late',
  'invalid_params',
  'internal'
])
export type ErrorCode = z.infer<typeof ErrorCode>

/** u/{userId}/d/{deviceId}/err: why a publish of this device was not accepted. */
export const ErrorMessage = z
  .object({
    code: ErrorCode,
    message: z.string(),
    ref: z
      .object({
        topic: z.string().describe('Topic of the refused publish'),
        cmid: z.string().optional().describe('Its client message id, when the payload had one'),
        rpcId: z.string().optional().describe('Its request id, when it was an RPC request')
      })
      .loose(),
    retryAfterMs: z.number().int().min(0).optional().describe('For rate_limited: when sending may resume'),
    ts: z.number().int()
  })
  .loose()
export type ErrorMessage = z.infer<typeof ErrorMessage>

/** u/{userId}/d/{deviceId}/res: the answer to an RpcRequest. */
export const RpcResponse = z.union([
  z.object({ id: Id, ok: z.literal(true), result: z.unknown() }).loose(),
  z.object({ id: Id, ok: z.literal(false), error: z.object({ code: ErrorCode, message: z.string() }).loose() }).loose()
])
export type RpcResponse = z.infer<typeof RpcResponse>

/** Every payload schema, by name, for JSON Schema generation and documentation. */
export const PAYLOAD_SCHEMAS = {
  SendMessage,
  ReadMarker,
  DeliveredMarker,
  Typing,
  RpcRequest,
  MessageEnvelope,
  Receipt,
  Event,
  ErrorMessage,
  RpcResponse,
  ConversationRef,
  MediaRef
} as const
