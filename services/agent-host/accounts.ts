/** An account of the host's user database (passwd(5)). */
export interface HostAccount {
  name: string;
  uid: number;
  shell: string;
}

/** Shells that let no one log in. */
const NO_LOGIN = /(?:^|\/)(?:nologin|false)$/;

/**
 * The accounts of `passwd` (the text of /etc/passwd) that a person can log in as and whose
 * uid is in [from, from + count): such a user could trace, signal and enter agents running
 * with that uid (/proc/<pid>/root), and reach their sockets. An account made for the agents
 * (no login shell) is fine.
 */
export function loginAccountsAmong(passwd: string, from: number, count: number): HostAccount[] {
  const found: HostAccount[] = [];
  for (const line of passwd.split("\n")) {
    const [name, , uidText, , , , shell = ""] = line.split(":");
    const uid = Number(uidText);
    if (!name || !Number.isInteger(uid) || uid < from || uid >= from + count) continue;
    if (shell && !NO_LOGIN.test(shell.trim())) found.push({ name, uid, shell: shell.trim() });
  }
  return found;
}
