// TypeScript declarations for weft.js, the weft browser SDK.
// Served by the collector at /weft.d.ts. Every method is safe to call at any
// time: before the SDK has loaded calls are queued (getters answer
// `undefined`), and nothing ever throws into the page.

/** Properties, traits: any JSON-serialisable object. */
export type WeftProperties = Record<string, unknown>;

/** A consent category. `necessary` is always granted. */
export type WeftCategory = "necessary" | "analytics" | "marketing" | "personalization";

/** A category's value in `consent.set`: weft's booleans or Consent Mode's words. */
export type WeftConsentValue = boolean | "granted" | "denied";

/** What `consent.set` understands: weft's categories and Google Consent Mode v2 names. */
export interface WeftConsentInput {
  analytics?: WeftConsentValue;
  marketing?: WeftConsentValue;
  personalization?: WeftConsentValue;
  /** -> analytics */
  analytics_storage?: WeftConsentValue;
  /** -> marketing (granted only if every advertising name given is granted) */
  ad_storage?: WeftConsentValue;
  /** -> marketing */
  ad_user_data?: WeftConsentValue;
  /** -> marketing */
  ad_personalization?: WeftConsentValue;
  /** -> personalization */
  personalization_storage?: WeftConsentValue;
}

/** The preferences in force. */
export interface WeftConsentPreferences {
  necessary: true;
  analytics: boolean;
  marketing: boolean;
  personalization: boolean;
}

export interface WeftTrackOptions {
  /** The consent category the event needs; default `analytics`. */
  category?: WeftCategory;
}

/** What `debug()` answers: what waits, and what was lost since the page started. */
export interface WeftDebug {
  /** Messages queued (sent or waiting to be). */
  queued: number;
  /** Calls held in memory for an opt-in decision. */
  held: number;
  /** Calls dropped: more than 100 were already held before a decision. */
  heldDropped: number;
  /** Messages dropped, oldest first, at the queue's 512 KB cap. */
  queueDropped: number;
  /** Messages dropped for being over the collector's 32 KB limit. */
  tooLarge: number;
  /** Batches the collector refused for good (a 4xx). */
  refused: number;
}

export interface WeftConsent {
  /** Records a decision; categories not named keep their value. */
  set(preferences: WeftConsentInput): void;
  grantAll(): void;
  denyAll(): void;
  /** The preferences in force; `undefined` before the SDK has loaded. */
  get(): WeftConsentPreferences | undefined;
  /** Called with the preferences after every decision. */
  onChange(callback: (preferences: WeftConsentPreferences) => void): void;
}

export interface Weft {
  /** Records a page view (the first one and SPA route changes are automatic). */
  page(name?: string, properties?: WeftProperties): void;
  page(properties: WeftProperties): void;
  /** Records an event. */
  track(event: string, properties?: WeftProperties, options?: WeftTrackOptions): void;
  /** Ties this browser to a user; the userId is kept across page loads. */
  identify(userId: string, traits?: WeftProperties): void;
  /** Joins `previousId` (default: the current user, else the anonymous ID) to `userId`. */
  alias(userId: string, previousId?: string): void;
  /** Associates the user with a group (company, team, account). */
  group(groupId: string, traits?: WeftProperties): void;
  /** Forgets the user: a new anonymous ID, no userId, a new session. */
  reset(): void;
  /** Sends what is queued now. */
  flush(): void;
  /** Calls `callback` once the SDK has loaded. */
  ready(callback: (weft: Weft) => void): void;
  /** The anonymous ID; `undefined` without analytics consent or before load. */
  anonymousId(): string | undefined;
  /** The identified user, if any. */
  userId(): string | undefined;
  /** Counts of what is queued and what was lost; `undefined` before load. With `data-debug="true"` every loss is also logged. */
  debug(): WeftDebug | undefined;
  consent: WeftConsent;
}

declare global {
  interface Window {
    weft: Weft;
  }
  const weft: Weft;
}
