// What group changes share between the members' RPCs and the operators' admin routes.
import type { Group, GroupStore } from './store.js'

/** The changes RPC methods and admin routes share: same store writes, same events, same notices. */
export interface GroupOps {
  store(): Promise<GroupStore>
  /** Creates a group owned (first admin) by `owner`; `by` made the change. */
  create(by: string, owner: string, name: string, members: readonly string[]): Promise<Group>
  /** Adds users (members already in are skipped; the limit is checked first); returns those added. */
  add(by: string, group: Group, users: readonly string[]): Promise<string[]>
  /** Removes a member and tells it and the rest; false when it was not one. */
  remove(by: string, groupId: string, user: string): Promise<boolean>
  /** A group is never left without an admin: the longest-standing member takes over. Returns the heir. */
  ensureAdmin(by: string, groupId: string): Promise<string | undefined>
}

/** A change refused by a rule: a group over maxMembers (`limit`), or the system user as a member (`reserved`). */
export class ChangeRefused extends Error {
  constructor(
    readonly rule: 'limit' | 'reserved',
    message: string
  ) {
    super(message)
  }
}
